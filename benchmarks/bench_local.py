"""Local benchmark: madhatter against the serial loop and the usual process/thread pools.

Run ``python benchmarks/bench_local.py`` (full, < 3 minutes on 2 cores) or add ``--quick`` (CI
smoke, < 60 s), ``--only W1,W3`` and ``--json results.json``. See ``benchmarks/README.md``.

Method:

* **One process run, contestants side by side.** Every contestant of a workload runs the same
  module-level step functions (the madhatter decorators return the function itself, so the peers
  call exactly what madhatter ships). Each contestant first runs once on a small input (warm-up:
  imports, caches, first fork), then the contestants take turns, round-robin, for ``repeats``
  rounds, so drift in machine load hits all of them alike. The figure is the **best** of the
  repeats (as ``timeit`` does: the least disturbed run); the median is printed next to it.
* **Pool start-up is inside the timed region** for every contestant, as a user experiences it:
  pools are created (and shut down) inside the timed call, and joblib's reusable loky executor is
  shut down after each call (outside the timer), so the next call pays for its start-up too.
  madhatter starts its engine inside ``madhatter.run`` anyway.
* **Pure-Python work.** The CPU workloads spin a pure-Python loop whose length is calibrated at
  start so that one item takes the intended time (50 ms for W1, 10 us per step for W3). The
  calibration reaches spawned workers (loky) through an environment variable. No NumPy/BLAS is
  involved, so the usual ``OPENBLAS_NUM_THREADS`` oversubscription caveat is irrelevant here.
* **The serial loop** is the comprehension a user would write (``[f(x) for x in range(n)]``).
* **Time budget.** A peer more than ``PRUNE_FACTOR`` x slower than the fastest peer in round one
  is not repeated; joblib and mpire on the tiny items of W2/W3 (20-100x slower than ``Pool.imap``
  there) and the 10 s serial W4 are timed on two fractions of the input and extrapolated
  linearly, so start-up cancels out in the slope. W5 children are stopped after a time limit.
* **Results are checked**: every contestant's output must equal the serial loop's.
* **W5 memory** is the peak PSS summed over the contestant's whole process tree (the process and
  every descendant, from ``/proc/PID/smaps_rollup``), sampled every 20 ms by a thread of this
  (parent) process, while the contestant runs alone in a fresh subprocess
  (``--w5-child NAME N``); the child reports its own run time. PSS splits shared pages between the
  processes sharing them, so forked workers are not double-counted.

Workloads and targets (from the issue; peers' reference figures on this machine class in brackets):

* W1 heavy CPU, 64 items x 50 ms: speed-up over serial >= 1.92x [Pool ~1.91x].
* W2 tiny items, 1,000,000 x ``x*2+1``: items/s >= best peer [~4.9M/s] and >= 90 % of the serial
  loop [~14.6M/s].
* W3 map -> filter -> map, 200,000 items x 10 us per step: speed-up >= 1.8x.
* W4 I/O, 1,000 x ``sleep(0.01)`` on 64 threads: within 15 % of the ideal 16 x 10 ms = 0.16 s.
* W5 streaming, a generator of 1M and 5M ints through two maps to a streamed sum: time within 10 %
  of the serial loop; peak PSS < 100 MB and flat (5M peak <= 1.1 x the 1M peak).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import functools
import gc
import json
import math
import multiprocessing
import multiprocessing.pool
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import madhatter
from madhatter import Pipeline, depends, parallel, postprocess, preprocess

WORKERS = 2
"""Worker processes for every process-based contestant (the machine class has 2 cores)."""

W1_ITEM_SECONDS = 0.05
W3_STEP_SECONDS = 10e-6
W4_SLEEP_SECONDS = 0.01
W4_THREADS = 64
W5_SIZES = (1_000_000, 5_000_000)
W5_QUICK_SIZES = (200_000, 1_000_000)
W1_CHUNKSIZE = 1
"""``Pool.imap``/``Executor.map`` chunksize, tuned: 64 long items balance best one at a time."""
W2_CHUNKSIZE = 5000
"""Tuned: best of a sweep over 100..125,000 for 1M items (Pool flat from 5,000 up, PPE best here)."""
W3_CHUNKSIZE = 1000
"""Tuned: best of a sweep over 100..6,250 for 50,000 items (both Pool and PPE)."""
W5_CHUNKSIZE = 10_000
"""Chunk length for the peers in W5 (input length unknown: a generator)."""

SLOW_PEER_FRACTIONS = (0.1, 0.25)
"""joblib and mpire on W2/W3 are timed on 10 % and 25 % of the input and extrapolated."""
PRUNE_FACTOR = 2.0
"""Peers this much slower than the fastest one are timed once, not repeated (run-time budget)."""
W5_TIMEOUT_BASE_SECONDS = 2.0
W5_TIMEOUT_SECONDS_PER_MILLION = 1.0
"""A W5 child is stopped after 2 s + 1 s per million items (3 s at 1M, 7 s at 5M, ~5x the serial
loop): the slowest peers would otherwise take most of the time budget (mpire ~7 s per million)."""
W5_STOP_GRACE_SECONDS = 5.0
"""How long a stopped W5 child may take to shut its pool down before its tree is killed (a
killed joblib child leaves semaphores and memmapping folders in /dev/shm)."""
PSS_SAMPLE_SECONDS = 0.02
BUSY_LOAD = 0.5
"""A 1-minute load average above this at start means other processes share the 2 cores."""
CALIBRATION_ENV = "MADHATTER_BENCH_LOOPS_PER_SECOND"

Metric = Literal["speed-up", "items/s", "seconds"]


# -- calibrated pure-Python work -----------------------------------------------------------------


def spin(x: int, loops: int) -> int:
    """Pure-Python busy work: ``loops`` rounds of integer arithmetic, seeded by ``x``."""
    acc = x
    for i in range(loops):
        acc = (acc * 31 + i) & 0xFFFFFF
    return acc


def machine_facts() -> dict[str, object]:
    """What every benchmark's ``--json`` document starts with: versions, CPUs, workers."""
    return {
        "madhatter": madhatter.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "workers": WORKERS,
    }


def calibrate() -> float:
    """Rounds of :func:`spin` per second on this machine (best of 5 short runs)."""
    loops = 200_000
    spin(0, loops)
    best = min(_timed(functools.partial(spin, 0, loops)) for _ in range(5))
    return loops / best


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


_LOOPS_PER_SECOND = float(os.environ.get(CALIBRATION_ENV, "0"))
W1_LOOPS = round(W1_ITEM_SECONDS * _LOOPS_PER_SECOND)
W3_LOOPS = round(W3_STEP_SECONDS * _LOOPS_PER_SECOND)


def set_calibration(loops_per_second: float) -> None:
    """Fix the loop counts here, for forked workers, and in the environment, for spawned ones."""
    global _LOOPS_PER_SECOND, W1_LOOPS, W3_LOOPS
    _LOOPS_PER_SECOND = loops_per_second
    W1_LOOPS = round(W1_ITEM_SECONDS * loops_per_second)
    W3_LOOPS = round(W3_STEP_SECONDS * loops_per_second)
    os.environ[CALIBRATION_ENV] = repr(loops_per_second)


# -- the steps (madhatter pipelines; the peers call the same functions) ---------------------------


@preprocess
def w1_source(n: int = 64) -> range:
    return range(n)


@depends(w1_source)
@parallel.map
def w1_heavy(x: int) -> int:
    return spin(x, W1_LOOPS)


@preprocess
def w2_source(n: int = 1_000_000) -> range:
    return range(n)


@depends(w2_source)
@parallel.map
def w2_double(x: int) -> int:
    return x * 2 + 1


@preprocess
def w3_source(n: int = 200_000) -> range:
    return range(n)


@depends(w3_source)
@parallel.map
def w3_first(x: int) -> int:
    return spin(x, W3_LOOPS)


@depends(w3_first)
@parallel.filter
def w3_keep(x: int) -> bool:
    return spin(x, W3_LOOPS) % 2 == 0


@depends(w3_keep)
@parallel.map
def w3_last(x: int) -> int:
    return spin(x, W3_LOOPS)


@preprocess
def w4_source(n: int = 1000) -> range:
    return range(n)


@depends(w4_source)
@parallel.map
def w4_wait(x: int) -> int:
    time.sleep(W4_SLEEP_SECONDS)
    return x


@preprocess
def w5_source(n: int = 5_000_000) -> Iterator[int]:
    yield from range(n)


@depends(w5_source)
@parallel.map
def w5_triple(x: int) -> int:
    return x * 3


@depends(w5_triple)
@parallel.map
def w5_increment(x: int) -> int:
    return x + 1


@depends(w5_increment)
@postprocess(stream=True)
def w5_total(values: Iterator[int]) -> int:
    return sum(values)


W1_PIPELINE = Pipeline([w1_source, w1_heavy])
W2_PIPELINE = Pipeline([w2_source, w2_double])
W3_PIPELINE = Pipeline([w3_source, w3_first, w3_keep, w3_last])
W4_PIPELINE = Pipeline([w4_source, w4_wait])
W5_PIPELINE = Pipeline([w5_source, w5_triple, w5_increment, w5_total])

Kind = Literal["map", "filter"]
Chain = Sequence[tuple[Kind, Callable[[Any], Any]]]
W1_CHAIN: Chain = [("map", w1_heavy)]
W2_CHAIN: Chain = [("map", w2_double)]
W3_CHAIN: Chain = [("map", w3_first), ("filter", w3_keep), ("map", w3_last)]
W4_CHAIN: Chain = [("map", w4_wait)]
W5_CHAIN: Chain = [("map", w5_triple), ("map", w5_increment)]


# -- the contestants: one way per library to push items through a chain of map/filter steps ------


def keep_pair(predicate: Callable[[Any], bool], item: Any) -> tuple[Any, bool]:
    """A filter step for pools that only map: the item and whether to keep it."""
    return item, bool(predicate(item))


def _kept(pairs: Iterable[tuple[Any, bool]]) -> Iterator[Any]:
    return (item for item, keep in pairs if keep)


def serial_w1(n: int) -> list[int]:
    return [w1_heavy(x) for x in range(n)]


def serial_w2(n: int) -> list[int]:
    return [w2_double(x) for x in range(n)]


def serial_w3(n: int) -> list[int]:
    return [w3_last(y) for x in range(n) if w3_keep(y := w3_first(x))]


def serial_w4(n: int) -> list[int]:
    return [w4_wait(x) for x in range(n)]


def serial_w5(n: int) -> int:
    return sum(w5_increment(w5_triple(x)) for x in w5_source(n))


def pool_chain(
    pool: multiprocessing.pool.Pool, chain: Chain, items: Iterable[Any], chunksize: int
) -> Iterator[Any]:
    """Chained ``Pool.imap`` calls: each stage's lazy output is the next stage's input."""
    stream: Iterable[Any] = items
    for kind, fn in chain:
        if kind == "map":
            stream = pool.imap(fn, stream, chunksize)
        else:
            stream = _kept(pool.imap(functools.partial(keep_pair, fn), stream, chunksize))
    return iter(stream)


def executor_chain(
    executor: concurrent.futures.Executor, chain: Chain, items: Iterable[Any], chunksize: int
) -> Iterator[Any]:
    """Chained ``Executor.map`` calls (each submits its whole input at once: a barrier)."""
    stream: Iterable[Any] = items
    for kind, fn in chain:
        if kind == "map":
            stream = executor.map(fn, stream, chunksize=chunksize)
        else:
            pairs = executor.map(functools.partial(keep_pair, fn), stream, chunksize=chunksize)
            stream = _kept(pairs)
    return iter(stream)


def _calls(fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
    import joblib

    return (joblib.delayed(fn)(x) for x in items)


def joblib_chain(chain: Chain, items: Iterable[Any], *, backend: str, n_jobs: int) -> list[Any]:
    """One ``joblib.Parallel`` call per stage, each returning a list (a barrier)."""
    import joblib

    stream: Iterable[Any] = items
    for kind, fn in chain:
        run = joblib.Parallel(n_jobs=n_jobs, backend=backend, batch_size="auto")
        if kind == "map":
            stream = run(_calls(fn, stream))
        else:
            stream = list(_kept(run(_calls(functools.partial(keep_pair, fn), stream))))
    return list(stream)


def mpire_chain(chain: Chain, items: Iterable[Any], **pool_options: Any) -> list[Any]:
    """One ``WorkerPool.map`` per stage on one pool, each returning a list (a barrier)."""
    from mpire.pool import WorkerPool

    stream: Iterable[Any] = items
    with WorkerPool(**pool_options) as pool:
        for kind, fn in chain:
            if kind == "map":
                stream = pool.map(fn, stream)
            else:
                stream = list(_kept(pool.map(functools.partial(keep_pair, fn), stream)))
    return list(stream)


def shutdown_loky() -> None:
    """Stop joblib's reusable executor, so the next joblib call pays for its start-up."""
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


@dataclasses.dataclass(frozen=True)
class Contestant:
    """One way to run a workload.

    Attributes:
        name: as printed.
        run: takes the input size, returns the result (a list, or W5's sum).
        after: called after each timed call, outside the timer (e.g. stop a reusable pool).
        extrapolate: time the contestant on these two fractions of the input instead and
            extrapolate linearly to the whole (start-up cancels out in the slope): for contestants
            that would take most of the time budget on their own (the 10 s serial W4; joblib and
            mpire on the tiny items of W2 and W3, 20-100x slower than ``Pool.imap`` there).
        peer: False for the serial loop and madhatter itself.
    """

    name: str
    run: Callable[[int], Any]
    after: Callable[[], None] | None = None
    extrapolate: tuple[float, float] | None = None
    peer: bool = True


def process_contestants(
    serial: Callable[[int], list[Any]],
    chain: Chain,
    pipeline: Pipeline,
    chunksize: int,
    *,
    slow_peers: tuple[float, float] | None = None,
) -> list[Contestant]:
    """Serial, the process pools and madhatter (``processes`` engine) on one chain of steps."""

    def pool(n: int) -> list[Any]:
        with multiprocessing.Pool(WORKERS) as p:
            return list(pool_chain(p, chain, range(n), chunksize))

    def executor(n: int) -> list[Any]:
        with concurrent.futures.ProcessPoolExecutor(WORKERS) as ex:
            return list(executor_chain(ex, chain, range(n), chunksize))

    def loky(n: int) -> list[Any]:
        return joblib_chain(chain, range(n), backend="loky", n_jobs=WORKERS)

    def mpire(n: int) -> list[Any]:
        return mpire_chain(chain, range(n), n_jobs=WORKERS)

    def mad(n: int) -> list[Any]:
        result: list[Any] = madhatter.run(pipeline, engine="processes", workers=WORKERS, params={"n": n})
        return result

    return [
        Contestant("serial loop", serial, peer=False),
        Contestant("Pool.imap", pool),
        Contestant("ProcessPoolExecutor.map", executor),
        Contestant("joblib loky", loky, after=shutdown_loky, extrapolate=slow_peers),
        Contestant("mpire map", mpire, extrapolate=slow_peers),
        Contestant("madhatter processes", mad, peer=False),
    ]


def w4_contestants() -> list[Contestant]:
    """W4: the serial loop (extrapolated), thread pools and madhatter's ``threads`` engine."""

    def executor(n: int) -> list[Any]:
        with concurrent.futures.ThreadPoolExecutor(W4_THREADS) as ex:
            return list(executor_chain(ex, W4_CHAIN, range(n), 1))

    def threading_backend(n: int) -> list[Any]:
        return joblib_chain(W4_CHAIN, range(n), backend="threading", n_jobs=W4_THREADS)

    def mpire(n: int) -> list[Any]:
        options = {"n_jobs": W4_THREADS, "start_method": "threading", "use_dill": False}
        return mpire_chain(W4_CHAIN, range(n), **options)

    def mad(n: int) -> list[Any]:
        result: list[Any] = madhatter.run(
            W4_PIPELINE, engine="threads", workers=W4_THREADS, params={"n": n}
        )
        return result

    return [
        Contestant("serial loop", serial_w4, extrapolate=(0.02, 0.1), peer=False),
        Contestant("ThreadPoolExecutor.map", executor),
        Contestant("joblib threading", threading_backend),
        Contestant("mpire threading", mpire),
        Contestant("madhatter threads", mad, peer=False),
    ]


def w5_fused(x: int) -> int:
    """W5's two maps as one function, for joblib and mpire: neither can chain lazy calls (two
    ``return_as="generator"`` calls on one loky executor hang; mpire refuses a second ``imap``
    while one runs)."""
    return w5_increment(w5_triple(x))


def w5_run(name: str, n: int) -> int:
    """W5 contestant ``name`` on a generator of ``n`` ints; returns the sum."""
    if name == "serial loop":
        return serial_w5(n)
    if name == "serial map() chain":
        return sum(map(w5_increment, map(w5_triple, w5_source(n))))
    if name == "Pool.imap":
        with multiprocessing.Pool(WORKERS) as p:
            return sum(pool_chain(p, W5_CHAIN, w5_source(n), W5_CHUNKSIZE))
    if name == "ProcessPoolExecutor.map":
        with concurrent.futures.ProcessPoolExecutor(WORKERS) as ex:
            return sum(executor_chain(ex, W5_CHAIN, w5_source(n), W5_CHUNKSIZE))
    if name == "joblib loky (fused)":
        import joblib

        run = joblib.Parallel(n_jobs=WORKERS, batch_size="auto", return_as="generator")
        return sum(run(_calls(w5_fused, w5_source(n))))
    if name == "mpire imap (fused)":
        from mpire.pool import WorkerPool

        with WorkerPool(n_jobs=WORKERS) as p:
            return sum(p.imap(w5_fused, w5_source(n), chunk_size=W5_CHUNKSIZE))
    if name == "madhatter processes":
        params = {"n": n}
        total: int = madhatter.run(W5_PIPELINE, engine="processes", workers=WORKERS, params=params)
        return total
    if name == W5_BASELINE:
        return 0
    raise SystemExit(f"unknown W5 contestant {name!r}")


W5_CONTESTANTS = (
    "serial loop",
    "serial map() chain",
    "Pool.imap",
    "ProcessPoolExecutor.map",
    "joblib loky (fused)",
    "mpire imap (fused)",
    "madhatter processes",
)
W5_PEERS = W5_CONTESTANTS[2:-1]
W5_BASELINE = "baseline (imports only)"
"""A child that imports madhatter and exits: the interpreter's own share of every peak."""


# -- measuring -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Timing:
    """The timed runs of one contestant on one workload."""

    name: str
    peer: bool
    seconds: list[float] = dataclasses.field(default_factory=list)
    cores: list[float | None] = dataclasses.field(default_factory=list)
    note: str = ""

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def best_cores(self) -> float | None:
        """Cores busy on average during the best run (CPU seconds of the process tree / wall)."""
        return self.cores[self.seconds.index(self.best)]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its children that have been reaped."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed_call(contestant: Contestant, n: int) -> tuple[float, float, Any]:
    """Wall seconds, cores busy on average, and the result of one call on ``n`` items.

    Pools are joined by the time the call (and ``after``) returns, so their workers' CPU time is
    in ``RUSAGE_CHILDREN``. Cores near 2.0 with a poor speed-up mean the CPU itself ran slower.
    """
    gc.collect()
    cpu = _cpu_seconds()
    started = time.perf_counter()
    result = contestant.run(n)
    seconds = time.perf_counter() - started
    if contestant.after is not None:
        contestant.after()
    return seconds, (_cpu_seconds() - cpu) / seconds, result


def _call(contestant: Contestant, n: int) -> tuple[float, float | None, Any]:
    """Time one call on ``n`` items (or extrapolate it): seconds, cores busy, result."""
    if contestant.extrapolate is None:
        return _timed_call(contestant, n)
    n1, n2 = (max(1, round(n * fraction)) for fraction in contestant.extrapolate)
    t1, _, _ = _timed_call(contestant, n1)
    t2, _, _ = _timed_call(contestant, n2)
    return t1 + (t2 - t1) * (n - n1) / (n2 - n1), None, None


def measure(contestants: Sequence[Contestant], n: int, *, repeats: int, warmup: int) -> list[Timing]:
    """Warm every contestant up, then time them round-robin; check results against the first.

    Peers slower than ``PRUNE_FACTOR`` x the fastest peer in the first round are timed only once:
    they cannot be the best peer, and repeating them would dominate the benchmark's run time.
    """
    for contestant in contestants:
        _timed_call(contestant, warmup)
    timings = [Timing(c.name, c.peer) for c in contestants]
    for contestant, timing in zip(contestants, timings, strict=True):
        if contestant.extrapolate is not None:
            n1, n2 = (max(1, round(n * fraction)) for fraction in contestant.extrapolate)
            timing.note = f"extrapolated from {n1:,} and {n2:,} items"
    expected: Any = None
    for round_ in range(repeats):
        if round_ == 1:
            fastest = min(t.best for t in timings if t.peer)
            for t in timings:
                if t.peer and t.best > PRUNE_FACTOR * fastest:
                    t.note = ", ".join(filter(None, [t.note, "timed once (slow)"]))
        for contestant, timing in zip(contestants, timings, strict=True):
            if round_ and "timed once" in timing.note:
                continue
            seconds, cores, result = _call(contestant, n)
            timing.seconds.append(seconds)
            timing.cores.append(cores)
            if contestant.extrapolate is not None:
                continue
            if expected is None:
                expected = result
            elif result != expected:
                raise SystemExit(f"{contestant.name} returned a different result than serial")
    return timings


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants, from ``/proc/PID/task/TID/children``."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as file:
                    todo.extend(int(child) for child in file.read().split())
            except OSError:
                pass
    return pids


def pss_bytes(pid: int) -> int:
    """The proportional set size of one process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as file:
            for line in file:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class PeakPss:
    """Samples the summed PSS of a process tree from a thread until stopped; keeps the peak."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, sum(pss_bytes(pid) for pid in tree_pids(self.root)))
            if self._stop.wait(PSS_SAMPLE_SECONDS):
                return


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def w5_child(name: str, n: int) -> None:
    """``--w5-child``: run one W5 contestant and print its time and result as JSON."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    started = time.perf_counter()
    result = w5_run(name, n)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "result": result}), flush=True)


def w5_timeout(n: int) -> float:
    """Seconds a W5 child may run before it is stopped and reported as too slow."""
    return W5_TIMEOUT_BASE_SECONDS + W5_TIMEOUT_SECONDS_PER_MILLION * n / 1e6


def w5_in_subprocess(name: str, n: int) -> tuple[float | None, int, int | None]:
    """Run a W5 contestant in a fresh interpreter; return (seconds, peak PSS bytes, result).

    A child still running after :func:`w5_timeout` is killed with its workers; its seconds and
    result are then ``None`` and its peak is the highest seen until then.
    """
    command = [sys.executable, os.path.abspath(__file__), "--w5-child", name, str(n)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    with PeakPss(process.pid) as sampler:
        try:
            out, _ = process.communicate(timeout=w5_timeout(n))
        except subprocess.TimeoutExpired:
            process.terminate()  # the child turns it into SystemExit: its pool cleans up
            try:
                process.communicate(timeout=W5_STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                for pid in reversed(tree_pids(process.pid)):  # our child and what it started
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                process.communicate()
            return None, sampler.peak, None
    if process.returncode != 0:
        raise SystemExit(f"W5 child {name!r} n={n} failed with exit code {process.returncode}")
    report = json.loads(out.strip().splitlines()[-1])
    return report["seconds"], sampler.peak, report["result"]


# -- workloads and reporting ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workload:
    key: str
    title: str
    size: int
    quick_size: int
    metric: Metric
    contestants: Callable[[], list[Contestant]]


WORKLOADS = {
    "W1": Workload(
        "W1",
        "heavy CPU: items x 50 ms of pure Python",
        64,
        16,
        "speed-up",
        lambda: process_contestants(serial_w1, W1_CHAIN, W1_PIPELINE, W1_CHUNKSIZE),
    ),
    "W2": Workload(
        "W2",
        "tiny items: x*2+1",
        1_000_000,
        200_000,
        "items/s",
        lambda: process_contestants(
            serial_w2, W2_CHAIN, W2_PIPELINE, W2_CHUNKSIZE, slow_peers=SLOW_PEER_FRACTIONS
        ),
    ),
    "W3": Workload(
        "W3",
        "map -> filter -> map, 10 us per item per step",
        200_000,
        20_000,
        "speed-up",
        lambda: process_contestants(
            serial_w3, W3_CHAIN, W3_PIPELINE, W3_CHUNKSIZE, slow_peers=SLOW_PEER_FRACTIONS
        ),
    ),
    "W4": Workload(
        "W4",
        f"I/O: sleep(0.01) per item on {W4_THREADS} threads",
        1000,
        1000,
        "seconds",
        w4_contestants,
    ),
}


def figure(metric: Metric, n: int, seconds: float, serial: float) -> float:
    if metric == "speed-up":
        return serial / seconds
    if metric == "items/s":
        return n / seconds
    return seconds


def show(metric: Metric, value: float) -> str:
    if metric == "speed-up":
        return f"{value:.2f}x"
    if metric == "items/s":
        return f"{value / 1e6:.2f}M/s"
    return f"{value:.3f} s"


@dataclasses.dataclass
class Verdict:
    """One row of the summary table."""

    workload: str
    madhatter: str
    best_peer: str
    vs_peer: str
    vs_serial: str
    target: str
    met: bool


def run_workload(workload: Workload, *, quick: bool, repeats: int) -> tuple[dict[str, Any], Verdict]:
    n = workload.quick_size if quick else workload.size
    warmup = max(1, n // 50)
    print(f"\n{workload.key} {workload.title}: n={n:,}, warm-up n={warmup:,}, best of {repeats}")
    timings = measure(workload.contestants(), n, repeats=repeats, warmup=warmup)
    serial = timings[0]
    mad = timings[-1]
    peers = [t for t in timings if t.peer]
    best_peer = min(peers, key=lambda t: t.best)
    print(f"  {'contestant':<26}{'best s':>10}{'median s':>10}{workload.metric:>12}{'cores':>7}")
    rows = {}
    for t in timings:
        value = figure(workload.metric, n, t.best, serial.best)
        rows[t.name] = {
            "seconds": t.seconds,
            "cores_busy": t.cores,
            "best": t.best,
            "figure": value,
            "note": t.note,
        }
        cores = "-" if t.best_cores is None else f"{t.best_cores:.2f}"
        note = f"  ({t.note})" if t.note else ""
        figure_cell = show(workload.metric, value)
        print(f"  {t.name:<26}{t.best:>10.3f}{t.median:>10.3f}{figure_cell:>12}{cores:>7}{note}")
    vs_peer, vs_serial = best_peer.best / mad.best, serial.best / mad.best
    print(
        f"  madhatter: {vs_peer:.2f}x the speed of the best peer ({best_peer.name}), "
        f"{vs_serial:.2f}x the serial loop"
    )
    mad_figure = figure(workload.metric, n, mad.best, serial.best)
    peer_figure = figure(workload.metric, n, best_peer.best, serial.best)
    if workload.key == "W1":
        target, met = ">= 1.92x", mad_figure >= 1.92
    elif workload.key == "W2":
        target = ">= best peer and >= 0.9 x serial"
        met = mad.best <= best_peer.best and mad.best <= serial.best / 0.9
    elif workload.key == "W3":
        target, met = ">= 1.8x", mad_figure >= 1.8
    else:
        ideal = math.ceil(n / W4_THREADS) * W4_SLEEP_SECONDS
        target = f"<= {1.15 * ideal:.3f} s (ideal {ideal:.2f} s + 15 %)"
        met = mad.best <= 1.15 * ideal
    verdict = Verdict(
        workload.key,
        show(workload.metric, mad_figure),
        f"{best_peer.name} {show(workload.metric, peer_figure)}",
        f"{vs_peer:.2f}x",
        f"{vs_serial:.2f}x",
        target,
        met,
    )
    return {"n": n, "metric": workload.metric, "contestants": rows}, verdict


def run_w5(*, quick: bool, repeats: int) -> tuple[dict[str, Any], list[Verdict]]:
    """W5: every contestant alone in a fresh subprocess, at the small then the big size.

    The serial loops and madhatter run ``repeats`` times per size (best time, highest peak); the
    peers run once. A peer that was stopped at the small size, or whose small-size time scaled
    linearly would pass the big size's timeout, is not run at the big size.
    """
    sizes = W5_QUICK_SIZES if quick else W5_SIZES
    names = (*W5_CONTESTANTS, W5_BASELINE)
    print(
        f"\nW5 streaming: generator -> two maps -> streamed sum, n={sizes[0]:,} and {sizes[-1]:,};"
        f" each run alone in a fresh subprocess; serial and madhatter best of {repeats}, peers once"
    )
    seconds: dict[tuple[str, int], list[float]] = {}
    peaks: dict[tuple[str, int], int] = {}
    notes: dict[tuple[str, int], str] = {}
    for index, n in enumerate(sizes):
        todo = list(names)
        if index:
            small = sizes[index - 1]
            for name in W5_PEERS:
                if (name, small) not in seconds:
                    todo.remove(name)
                    notes[name, n] = "not run"
                elif (projected := min(seconds[name, small]) * n / small) > w5_timeout(n):
                    todo.remove(name)
                    notes[name, n] = f"not run: ~{projected:.0f} s"
        expected = None
        for round_ in range(repeats):
            for name in todo if round_ == 0 else [c for c in W5_CONTESTANTS if c not in W5_PEERS]:
                took, peak, result = w5_in_subprocess(name, n)
                peaks[name, n] = max(peaks.get((name, n), 0), peak)
                if took is None:
                    notes[name, n] = f"stopped at {w5_timeout(n):.1f} s"
                    continue
                seconds.setdefault((name, n), []).append(took)
                if name == W5_BASELINE:
                    continue
                if expected is None:
                    expected = result
                elif result != expected:
                    raise SystemExit(f"W5: {name} returned a different sum than the serial loop")
    head = "".join(f"{'s @' + _millions(n):>10}{'MB @' + _millions(n):>10}" for n in sizes)
    print(f"  {'contestant':<26}{head}")
    rows: dict[str, Any] = {}
    for name in names:
        cells, rows[name] = "", {}
        for n in sizes:
            time_cell = f"{min(seconds[name, n]):.3f}" if (name, n) in seconds else "-"
            peak_cell = f"{peaks[name, n] / 1e6:.1f}" if (name, n) in peaks else "-"
            cells += f"{time_cell:>10}{peak_cell:>10}"
            rows[name][_millions(n)] = {
                "seconds": seconds.get((name, n)),
                "peak_pss_bytes": peaks.get((name, n)),
                "note": notes.get((name, n), ""),
            }
        remarks = [f"{_millions(n)}: {notes[name, n]}" for n in sizes if (name, n) in notes]
        print(f"  {name:<26}{cells}" + (f"  ({'; '.join(remarks)})" if remarks else ""))
    small, big = sizes[0], sizes[-1]
    mad, ser = "madhatter processes", "serial loop"
    ran = [name for name in W5_PEERS if (name, big) in seconds]
    best_time = min(ran, key=lambda name: min(seconds[name, big]))
    best_memory = min(ran, key=lambda name: peaks[name, big])
    peer_time, mad_time = min(seconds[best_time, big]), min(seconds[mad, big])
    slowdown = {n: min(seconds[mad, n]) / min(seconds[ser, n]) for n in sizes}
    growth = peaks[mad, big] / peaks[mad, small]
    print(
        f"  madhatter: {slowdown[small]:.2f}x / {slowdown[big]:.2f}x the serial loop's time at "
        f"{_millions(small)} / {_millions(big)}; {peer_time / mad_time:.2f}x the speed of the best "
        f"peer ({best_time}); peak {peaks[mad, big] / 1e6:.1f} MB, {growth:.2f}x its "
        f"{_millions(small)} peak"
    )
    verdicts = [
        Verdict(
            "W5 time",
            f"{mad_time:.3f} s @{_millions(big)}",
            f"{best_time} {peer_time:.3f} s",
            f"{peer_time / mad_time:.2f}x",
            f"{1 / slowdown[big]:.2f}x",
            f"<= 1.1 x serial at both sizes ({slowdown[small]:.2f}x, {slowdown[big]:.2f}x)",
            max(slowdown.values()) <= 1.10,
        ),
        Verdict(
            "W5 peak PSS",
            f"{peaks[mad, big] / 1e6:.1f} MB @{_millions(big)}",
            f"{best_memory} {peaks[best_memory, big] / 1e6:.1f} MB",
            f"{peaks[best_memory, big] / peaks[mad, big]:.2f}x",
            f"{peaks[ser, big] / peaks[mad, big]:.2f}x",
            f"< 100 MB and flat ({_millions(small)}->{_millions(big)}: {growth:.2f}x <= 1.1x)",
            max(peaks[mad, n] for n in sizes) < 100e6 and growth <= 1.10,
        ),
    ]
    return {"sizes": list(sizes), "contestants": rows}, verdicts


def _millions(n: int) -> str:
    return f"{n / 1e6:g}M"


def print_summary(verdicts: list[Verdict]) -> None:
    headers = ("workload", "madhatter", "best peer", "vs peer", "vs serial", "target", "met")
    cells = [
        (
            v.workload,
            v.madhatter,
            v.best_peer,
            v.vs_peer,
            v.vs_serial,
            v.target,
            "yes" if v.met else "NO",
        )
        for v in verdicts
    ]
    widths = [max(len(row[i]) for row in [headers, *cells]) for i in range(len(headers))]
    print(
        "\nSummary (vs peer / vs serial: the best peer's or the serial loop's time, or peak memory,"
        " divided by madhatter's: above 1 means madhatter is faster or smaller)"
    )
    for row in [headers, *cells]:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one repeat (< 60 s)")
    parser.add_argument("--only", help="comma-separated workloads, e.g. W1,W3 (default: all)")
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    parser.add_argument("--repeats", type=int, help="timed rounds (default: 3, or 1 with --quick)")
    parser.add_argument("--w5-child", nargs=2, metavar=("NAME", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.w5_child:
        w5_child(args.w5_child[0], int(args.w5_child[1]))
        return 0

    selected = [key.strip().upper() for key in (args.only or "W1,W2,W3,W4,W5").split(",")]
    unknown = set(selected) - {*WORKLOADS, "W5"}
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    repeats = args.repeats or (1 if args.quick else 3)
    started = time.perf_counter()
    set_calibration(calibrate())
    load_before = os.getloadavg()[0]
    print(
        f"madhatter {madhatter.__version__} | Python {platform.python_version()} | "
        f"{os.cpu_count()} CPUs | {WORKERS} workers | mode: {'quick' if args.quick else 'full'} | "
        f"load average {load_before:.2f}"
    )
    if load_before > BUSY_LOAD:
        print(f"warning: the machine is busy (load {load_before:.2f}): figures will be distorted")
    print(
        f"calibration: {_LOOPS_PER_SECOND / 1e6:.1f}M spin rounds/s -> W1 {W1_LOOPS:,} rounds "
        f"(~{W1_ITEM_SECONDS * 1e3:g} ms), W3 {W3_LOOPS} rounds (~{W3_STEP_SECONDS * 1e6:g} us)"
    )
    results: dict[str, Any] = {}
    verdicts: list[Verdict] = []
    for key in selected:
        if key == "W5":
            w5_repeats = args.repeats or (2 if args.quick else 3)
            results[key], w5_verdicts = run_w5(quick=args.quick, repeats=w5_repeats)
            verdicts.extend(w5_verdicts)
        else:
            results[key], verdict = run_workload(WORKLOADS[key], quick=args.quick, repeats=repeats)
            verdicts.append(verdict)
    print_summary(verdicts)
    elapsed = time.perf_counter() - started
    print(f"\ntotal {elapsed:.0f} s")
    if args.json:
        document = {
            **machine_facts(),
            "mode": "quick" if args.quick else "full",
            "repeats": repeats,
            "loops_per_second": _LOOPS_PER_SECOND,
            "load_average_before": load_before,
            "seconds": elapsed,
            "workloads": results,
            "summary": [dataclasses.asdict(v) for v in verdicts],
        }
        with open(args.json, "w") as file:
            json.dump(document, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
