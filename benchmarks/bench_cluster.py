"""Cluster benchmark: madhatter on Dask and Ray against hand-written code for the same cluster.

Run ``python benchmarks/bench_cluster.py`` (full, < 5 minutes on 2 cores) or add ``--quick``
(smaller sizes, one round, < 90 s), ``--only dask`` or ``--only ray``, and ``--json results.json``.
See ``benchmarks/README.md``.

Method (that of ``bench_local.py``, whose steps, pipelines, calibration and serial loops this
script imports, so both benchmarks time exactly the same work):

* **One cluster per engine, started once and shared.** A ``distributed.LocalCluster`` of 2
  single-threaded worker processes on 127.0.0.1, and a local Ray with ``num_cpus=2`` on 127.0.0.1
  (no dashboard, no usage statistics), are started before anything is timed and stopped at exit,
  also on Ctrl-C, SIGTERM or an error. Their start-up is excluded from every figure: the question
  is what runs faster on a cluster that is already there. madhatter gets the cluster's address
  (``engine="dask", address=...``; ``engine="ray"`` reuses the Ray initialised in this process),
  so its per-run cost of connecting, checking the workers' versions and shipping the step chain
  is inside its figure. ``inline=False`` makes it ship every step, as the peers do.
* **Hand-written peers** are what a competent user of that engine would write for the same steps:
  ``dask.bag`` (``from_sequence(..., npartitions=...).map().filter().map().compute()``, which Dask's
  optimiser fuses into one task per partition) and ``client.map`` over hand-made chunks, both on a
  ``Client`` opened once; Ray tasks over the same chunks. For W3 the chunked peers come twice: one
  task per step and chunk (the next step's tasks get the previous step's futures or object refs,
  so data stays on the cluster) and one fused task per chunk. Chunk sizes are tuned (see the
  constants). The serial loop is printed for reference, and so is, for W3 on Dask, a *reference*
  row that is not a peer: the fused ``client.map`` with each result list boxed in a 1-tuple,
  which sidesteps Dask's item-by-item serialisation of list results (see
  :func:`apply_chain_boxed`), the fastest Dask code we know for W3.
* **Side by side, best of N.** As in ``bench_local.py``: each contestant first runs once on 2 % of
  the input (warm-up: imports on the workers, first tasks), then all contestants of a workload
  take turns, round-robin, for ``--repeats`` rounds, so drift in machine load hits all alike. The
  figure is the best round; the median is printed next to it. A peer more than 2x slower than
  the fastest peer of its engine in round one is not repeated. Every result is checked against
  the serial loop's.
* **Cores** is the CPU time (user + system) of this process and all its descendants (the Dask
  workers and nannies, Ray's raylet, GCS and workers: read from ``/proc``) during the call,
  divided by its wall time. The idle clusters' own share is measured at start and printed.
* **Pure-Python work**, calibrated at start (50 ms per W1 item, 10 us per W3 step); the
  calibration reaches the workers through an environment variable set before the clusters start,
  and this directory is put on the workers' ``PYTHONPATH`` so they import the steps by name.

Workloads and targets (from the issue), per engine:

* W1 heavy CPU, 64 items x 50 ms: madhatter's time within 10 % of the best hand-written peer's.
* W3 map -> filter -> map, 200,000 items x 10 us per step: madhatter faster than the best
  hand-written peer (it fuses the three steps into one task per chunk). A second madhatter row
  runs the three steps unfused (``fuse=False``: one task per step and chunk, the outputs kept on
  the cluster between steps): within 1.2x of the fused run's time.
* D1 driver CPU per task (Dask only), 20,000 one-item tasks of a trivial step: the CPU time of
  this process (``time.process_time()``: every thread of the driver, nothing of the cluster's)
  per task, for madhatter (``chunk_by=1``, ``inline=False``) and for ``client.map`` over the same
  items. Target: <= 1.5 ms per task for madhatter, and the driver below half a core. It runs on a
  cluster of its own whose scheduler is a separate process, as on a real cluster (the shared
  ``LocalCluster`` runs its scheduler in this process, whose CPU would count as the driver's).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import importlib
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import bench_local
from bench_local import (
    BUSY_LOAD,
    PRUNE_FACTOR,
    W1_ITEM_SECONDS,
    W1_PIPELINE,
    W3_CHAIN,
    W3_PIPELINE,
    W3_STEP_SECONDS,
    WORKERS,
    Chain,
    Kind,
    Timing,
    calibrate,
    machine_facts,
    serial_w1,
    serial_w3,
    set_calibration,
    tree_pids,
    w1_heavy,
)

import madhatter
from madhatter import depends, parallel, preprocess

Engine = Literal["dask", "ray"]
ENGINES: tuple[Engine, ...] = ("dask", "ray")
SERIAL: Literal["serial"] = "serial"
"""The engine column of the serial loop."""

W1_CHUNK = 1
"""Items per hand-written task in W1: 50 ms items balance best one at a time (as in
``bench_local.W1_CHUNKSIZE``); a task's own cost (~1 ms on Dask, less on Ray) is 2 % of that."""
W3_CHUNK = 2500
"""Items per hand-written task in W3 (80 tasks per step at 200,000 items, ~60 ms each when fused):
tuned, the best of a sweep over 1,000..25,000 for Ray tasks (fused and per step); ``client.map``
was flat from 1,000 to 25,000 (5-7 s, dominated by the serialisation of its list results)."""
W3_PARTITIONS = 16
"""``dask.bag`` partitions in W3 (8 per worker): a sweep over 8..128 found no clear optimum, all
8-11 s, dominated by Dask's serialisation of the list partitions between tasks and to the client."""

W1_TOLERANCE = 1.05
"""W1 target: madhatter's time <= this x the best hand-written peer's (issue 10)."""
UNFUSED_TOLERANCE = 1.2
"""W3 target on Dask: madhatter unfused within this x madhatter fused (issue 10)."""
D1_TASKS = 20_000
"""D1: one-item tasks per run (issue 10: "a 20,000-task run on a local Dask cluster")."""
D1_QUICK_TASKS = 2_000
D1_MS_PER_TASK = 1.5
"""D1 target: madhatter's driver CPU per task, in ms (issue 10)."""
D1_DRIVER_CORES = 0.5
"""D1 target: the driver's CPU time over the run's wall time (issue 10: "below 50% of one core")."""
IDLE_SECONDS = 2.0
"""How long the idle clusters are watched at start, to measure their own CPU use."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RAY_IMPORT_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""Read by Ray on import: no usage statistics, and its single-machine mode, which keeps a node
address of 127.0.0.1 as given (otherwise Ray swaps in the machine's outward address and its
servers listen on every interface)."""
_BLACKHOLE = "http://127.0.0.1:9"
RAY_START_ENV = {
    **dict.fromkeys(("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"), _BLACKHOLE),
    **dict.fromkeys(("NO_PROXY", "no_proxy"), "127.0.0.1,localhost,::1"),
}
"""For the processes Ray starts (they inherit it): a proxy that does not exist, so their HTTP
requests cannot leave the machine. Ray's dashboard process, started even without a dashboard,
otherwise probes the cloud metadata service (169.254.169.254) and looks up its name (as
madhatter's own engine prevents, ``LOCAL_RAY_ENV`` in ``engines/_ray_connection.py``)."""
BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))


# -- hand-written code: the steps of a chain applied to one chunk of items -----------------------


def apply_step(kind: Kind, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """One map or filter step over one chunk (a hand-written task)."""
    if kind == "map":
        return [fn(x) for x in items]
    return [x for x in items if fn(x)]


def apply_chain(chain: Chain, items: list[Any]) -> list[Any]:
    """Every step of ``chain`` over one chunk, in one task (hand-fused)."""
    for kind, fn in chain:
        items = apply_step(kind, fn, items)
    return items


def apply_chain_boxed(chain: Chain, items: list[Any]) -> tuple[list[Any]]:
    """:func:`apply_chain`, its result list boxed in a 1-tuple: Dask then pickles the list whole.

    Dask serialises a task's result that is a list, tuple or set element by element (one pickle
    and one frame per item: ``Serialize`` in ``distributed/protocol/serialize.py`` iterates
    collections; dask/distributed#6368), ~40 ms per 1,000 ints here; inside a box, the list is
    one object. madhatter's results are dataclasses, so it never pays this.
    """
    return (apply_chain(chain, items),)


def chunks(n: int, size: int) -> list[list[int]]:
    """``range(n)`` as lists of ``size`` items, the input of hand-written tasks."""
    return [list(range(start, min(n, start + size))) for start in range(0, n, size)]


def worker_pid(wait: float) -> int:
    """Keeps a worker busy for ``wait`` seconds (so the next task needs another) and says which."""
    time.sleep(wait)
    return os.getpid()


def flatten(parts: Sequence[list[Any]]) -> list[Any]:
    return [item for part in parts for item in part]


@contextlib.contextmanager
def environment(variables: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``variables`` set, for the processes started in the block."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def untyped(module: str) -> Any:
    """An engine's package, imported when its cluster starts (Dask and Ray are not typed)."""
    return importlib.import_module(module)


# -- contestants -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Contestant:
    """One way to run a workload: ``run`` takes the input size and returns the result list.

    ``peer`` is False for the serial loop, madhatter, and reference rows (``reference``): code
    shown for comparison that a user would not write, left out of the targets. ``unfused`` marks
    madhatter's second row of a multi-step workload, run with ``fuse=False``.
    """

    engine: Engine | Literal["serial"]
    name: str
    run: Callable[[int], list[Any]]
    peer: bool = True
    reference: bool = False
    unfused: bool = False


@dataclasses.dataclass(frozen=True)
class Workload:
    key: str
    title: str
    size: int
    quick_size: int
    serial: Callable[[int], list[Any]]
    pipeline: madhatter.Pipeline
    chain: Chain
    chunk: int
    partitions: Callable[[int], int]
    target: str


WORKLOADS = {
    "W1": Workload(
        "W1",
        "heavy CPU: items x 50 ms of pure Python",
        64,
        16,
        serial_w1,
        W1_PIPELINE,
        [("map", w1_heavy)],
        W1_CHUNK,
        lambda n: n,  # one item per partition, like W1_CHUNK
        f"<= {W1_TOLERANCE:.2f} x best peer's time",
    ),
    "W3": Workload(
        "W3",
        "map -> filter -> map, 10 us per item per step",
        200_000,
        20_000,
        serial_w3,
        W3_PIPELINE,
        W3_CHAIN,
        W3_CHUNK,
        lambda n: W3_PARTITIONS,
        "faster than best peer",
    ),
}


class DaskSide:
    """The shared Dask cluster and a client for the hand-written peers."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        distributed = untyped("distributed")
        started = time.perf_counter()
        self.cluster = stack.enter_context(
            distributed.LocalCluster(
                n_workers=WORKERS,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
                silence_logs=logging.ERROR,
            )
        )
        self.client = stack.enter_context(distributed.Client(self.cluster, set_as_default=False))
        self.client.wait_for_workers(WORKERS)
        self.start_seconds = time.perf_counter() - started
        self.address: str = self.cluster.scheduler_address

    def describe(self) -> str:
        return (
            f"dask: LocalCluster({WORKERS} worker processes x 1 thread, {self.address}) started in "
            f"{self.start_seconds:.1f} s, shared by every Dask contestant; start-up excluded"
        )

    def contestants(self, workload: Workload) -> list[Contestant]:
        bag_module = untyped("dask.bag")
        client = self.client

        def bag(n: int) -> list[Any]:
            items: Any = bag_module.from_sequence(range(n), npartitions=workload.partitions(n))
            for kind, fn in workload.chain:
                items = items.map(fn) if kind == "map" else items.filter(fn)
            result: list[Any] = items.compute(scheduler=client)
            return result

        def per_step(n: int) -> list[Any]:
            parts: list[Any] = chunks(n, workload.chunk)
            for kind, fn in workload.chain:
                parts = client.map(functools.partial(apply_step, kind, fn), parts, pure=False)
            return flatten(client.gather(parts))

        def fused(n: int) -> list[Any]:
            task = functools.partial(apply_chain, workload.chain)
            return flatten(client.gather(client.map(task, chunks(n, workload.chunk), pure=False)))

        def boxed(n: int) -> list[Any]:
            task = functools.partial(apply_chain_boxed, workload.chain)
            parts = client.gather(client.map(task, chunks(n, workload.chunk), pure=False))
            return flatten([box[0] for box in parts])

        def mad(n: int, fuse: bool = True) -> list[Any]:
            result: list[Any] = madhatter.run(
                workload.pipeline,
                engine="dask",
                address=self.address,
                inline=False,
                fuse=fuse,
                params={"n": n},
            )
            return result

        peers = [Contestant("dask", "dask.bag", bag)]
        if len(workload.chain) == 1:
            peers.append(Contestant("dask", "client.map", fused))
        else:
            peers.append(Contestant("dask", "client.map, task per step", per_step))
            peers.append(Contestant("dask", "client.map, fused", fused))
            peers.append(
                Contestant("dask", "client.map, fused, boxed", boxed, peer=False, reference=True)
            )
        return [*peers, *madhatter_rows("dask", workload, mad)]


class RaySide:
    """The shared local Ray (started in this process: madhatter's engine reuses it)."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        ray = untyped("ray")
        self.ray = ray
        temp_dir = tempfile.mkdtemp(prefix="mh-bench-ray-")
        stack.callback(shutil.rmtree, temp_dir, ignore_errors=True)
        started = time.perf_counter()
        with environment(RAY_START_ENV):
            context: Any = ray.init(
                address="local",  # a new Ray, never one that `ray start` left running here
                num_cpus=WORKERS,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                _temp_dir=temp_dir,
                logging_level=logging.WARNING,
            )
        stack.callback(ray.shutdown)
        node = context.address_info["node_ip_address"]
        if node != "127.0.0.1":
            raise SystemExit(f"Ray started on {node}, not 127.0.0.1: stopped")
        self.address: str = context.address_info["address"]
        ray.get([ray.remote(worker_pid).remote(0.2) for _ in range(WORKERS)])  # workers up
        self.start_seconds = time.perf_counter() - started

    def describe(self) -> str:
        return (
            f"ray: ray.init(num_cpus={WORKERS}, 127.0.0.1, no dashboard) at {self.address} started "
            f"in {self.start_seconds:.1f} s, shared by every Ray contestant; start-up excluded"
        )

    def contestants(self, workload: Workload) -> list[Contestant]:
        ray = self.ray
        step_task = ray.remote(apply_step)
        chain_task = ray.remote(apply_chain)

        def per_step(n: int) -> list[Any]:
            parts: list[Any] = chunks(n, workload.chunk)
            for kind, fn in workload.chain:
                parts = [step_task.remote(kind, fn, part) for part in parts]
            return flatten(ray.get(parts))

        def fused(n: int) -> list[Any]:
            parts = chunks(n, workload.chunk)
            return flatten(ray.get([chain_task.remote(workload.chain, part) for part in parts]))

        def mad(n: int, fuse: bool = True) -> list[Any]:
            result: list[Any] = madhatter.run(
                workload.pipeline,
                engine="ray",
                address=self.address,
                inline=False,
                fuse=fuse,
                params={"n": n},
            )
            return result

        if len(workload.chain) == 1:
            peers = [Contestant("ray", "ray tasks", fused)]
        else:
            peers = [
                Contestant("ray", "ray tasks, task per step", per_step),
                Contestant("ray", "ray tasks, fused", fused),
            ]
        return [*peers, *madhatter_rows("ray", workload, mad)]


def madhatter_rows(
    engine: Engine, workload: Workload, run: Callable[..., list[Any]]
) -> list[Contestant]:
    """madhatter's contestants on ``engine``: the pipeline as planned, and for a chain of steps
    also unfused (one task per step and chunk, outputs kept on the cluster in between)."""
    rows = [Contestant(engine, f"madhatter {engine}", run, peer=False)]
    if len(workload.chain) > 1:
        unfused = functools.partial(run, fuse=False)
        rows.append(Contestant(engine, f"madhatter {engine}, unfused", unfused, False, unfused=True))
    return rows


# -- D1: the driver's own CPU per task -------------------------------------------------------------


@preprocess
def d1_source(n: int = D1_TASKS) -> range:
    return range(n)


@depends(d1_source)
@parallel.map(chunk_by=1)
def d1_step(x: int) -> int:
    """A task that costs nothing: what is left is the hand-off, driver side and cluster side."""
    return x + 1


D1_PIPELINE = madhatter.Pipeline([d1_source, d1_step])


def d1_task(x: int) -> int:
    """The same step for the hand-written ``client.map``."""
    return x + 1


@dataclasses.dataclass
class DriverTiming:
    """D1 runs of one contestant: the driver's CPU seconds and the wall seconds of each."""

    name: str
    cpu: list[float] = dataclasses.field(default_factory=list)
    wall: list[float] = dataclasses.field(default_factory=list)

    def ms_per_task(self, n: int) -> float:
        return 1e3 * min(self.cpu) / n

    def cores(self) -> float:
        """The driver's CPU over wall time, in the run of least CPU."""
        best = self.cpu.index(min(self.cpu))
        return self.cpu[best] / self.wall[best]


def run_driver_cpu(*, quick: bool, repeats: int) -> dict[str, Any]:
    """D1 on a Dask cluster of its own (scheduler and workers in processes of their own), started
    and stopped here; the contestants take turns, as in :func:`measure`."""
    distributed = untyped("distributed")
    subprocess_cluster = untyped("distributed.deploy.subprocess").SubprocessCluster
    n = D1_QUICK_TASKS if quick else D1_TASKS
    print(
        f"\nD1 driver CPU per task: {n:,} one-item tasks of a trivial step, Dask cluster with its "
        f"scheduler in a process of its own, best of {repeats}"
    )
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(
            subprocess_cluster(
                host="127.0.0.1",
                n_workers=WORKERS,
                threads_per_worker=1,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
        )
        client = stack.enter_context(distributed.Client(cluster, set_as_default=False))
        client.wait_for_workers(WORKERS)

        def hand_written(count: int) -> list[Any]:
            result: list[Any] = client.gather(client.map(d1_task, range(count), pure=False))
            return result

        def mad(count: int) -> list[Any]:
            result: list[Any] = madhatter.run(
                D1_PIPELINE,
                engine="dask",
                address=cluster.scheduler_address,
                inline=False,
                params={"n": count},
            )
            return result

        contestants = {"client.map": hand_written, "madhatter dask": mad}
        timings = {name: DriverTiming(name) for name in contestants}
        expected = [x + 1 for x in range(n)]
        for run in contestants.values():
            run(max(1, n // 50))  # warm-up
        for _ in range(repeats):
            for name, run in contestants.items():
                gc.collect()
                cpu, started = time.process_time(), time.perf_counter()
                result = run(n)
                timings[name].wall.append(time.perf_counter() - started)
                timings[name].cpu.append(time.process_time() - cpu)
                if result != expected:
                    raise SystemExit(f"D1: {name} returned a wrong result")
    print(f"  {'contestant':<20}{'driver ms/task':>15}{'median':>9}{'wall s':>9}{'driver cores':>14}")
    for t in timings.values():
        median = 1e3 * statistics.median(t.cpu) / n
        print(
            f"  {t.name:<20}{t.ms_per_task(n):>15.3f}{median:>9.3f}{min(t.wall):>9.2f}{t.cores():>14.2f}"
        )
    mad_t, peer_t = timings["madhatter dask"], timings["client.map"]
    ratios = [m / p for m, p in zip(mad_t.cpu, peer_t.cpu, strict=True)]
    ms = mad_t.ms_per_task(n)
    met = ms <= D1_MS_PER_TASK and mad_t.cores() < D1_DRIVER_CORES
    print(
        f"  madhatter's driver CPU per task is {ms / peer_t.ms_per_task(n):.2f}x client.map's "
        f"(per round {min(ratios):.2f}-{max(ratios):.2f}x); target <= {D1_MS_PER_TASK} ms and "
        f"< {D1_DRIVER_CORES} cores: {'met' if met else 'NOT met'}"
    )
    return {
        "n": n,
        "contestants": {
            t.name: {"cpu_seconds": t.cpu, "wall_seconds": t.wall, "ms_per_task": t.ms_per_task(n)}
            for t in timings.values()
        },
        "met": met,
    }


def ray_unavailable() -> str | None:
    """Why madhatter's Ray engine cannot run here, or ``None`` if it can.

    Imports Ray, after setting what Ray reads on import (``RAY_IMPORT_ENV``).
    """
    os.environ.update(RAY_IMPORT_ENV)
    try:
        import madhatter.engines.ray  # noqa: F401
    except Exception as exc:
        return f"madhatter.engines.ray does not import ({type(exc).__name__}: {exc})"
    return None


def dask_unavailable() -> str | None:
    try:
        import dask.bag  # noqa: F401
        import distributed  # noqa: F401
    except Exception as exc:
        return f"dask[distributed] does not import ({type(exc).__name__}: {exc})"
    return None


# -- measuring -----------------------------------------------------------------------------------


def tree_cpu_seconds() -> float:
    """CPU time (user + system, with reaped children) of this process and all its descendants."""
    ticks = 0
    for pid in tree_pids(os.getpid()):
        try:
            with open(f"/proc/{pid}/stat") as file:
                fields = file.read().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += sum(int(field) for field in fields[11:15])  # utime stime cutime cstime
    return ticks / CLOCK_TICKS


def idle_cores(seconds: float) -> float:
    """Cores the idle clusters (and this process) keep busy on their own."""
    cpu = tree_cpu_seconds()
    time.sleep(seconds)
    return (tree_cpu_seconds() - cpu) / seconds


def timed_call(contestant: Contestant, n: int) -> tuple[float, float, list[Any]]:
    """Wall seconds, cores busy on average, and the result of one call on ``n`` items."""
    gc.collect()
    cpu = tree_cpu_seconds()
    started = time.perf_counter()
    result = contestant.run(n)
    seconds = time.perf_counter() - started
    return seconds, (tree_cpu_seconds() - cpu) / seconds, result


def measure(contestants: Sequence[Contestant], n: int, *, repeats: int, warmup: int) -> list[Timing]:
    """Warm every contestant up, then time them round-robin; check results against the first.

    A peer slower than ``PRUNE_FACTOR`` x the fastest peer of its engine in round one is timed
    only once: it cannot be that engine's best peer.
    """
    for contestant in contestants:
        timed_call(contestant, warmup)
    timings = [Timing(c.name, c.peer) for c in contestants]
    expected: list[Any] | None = None
    for round_ in range(repeats):
        if round_ == 1:
            fastest: dict[str, float] = {}
            for contestant, timing in zip(contestants, timings, strict=True):
                if contestant.peer:
                    fastest[contestant.engine] = min(
                        timing.best, fastest.get(contestant.engine, timing.best)
                    )
            for contestant, timing in zip(contestants, timings, strict=True):
                if contestant.peer and timing.best > PRUNE_FACTOR * fastest[contestant.engine]:
                    timing.note = "timed once (slow)"
        for contestant, timing in zip(contestants, timings, strict=True):
            if round_ and timing.note:
                continue
            seconds, cores, result = timed_call(contestant, n)
            timing.seconds.append(seconds)
            timing.cores.append(cores)
            if expected is None:
                expected = result
            elif result != expected:
                raise SystemExit(f"{contestant.name} returned a different result than serial")
    return timings


# -- reporting -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Verdict:
    """One row of the summary table."""

    workload: str
    engine: str
    madhatter: float
    best_peer: str
    peer_seconds: float
    target: str
    met: bool
    spread: tuple[float, float] | None = None

    @property
    def vs_peer(self) -> float:
        """The best peer's time divided by madhatter's: above 1 means madhatter is faster."""
        return self.peer_seconds / self.madhatter


def role(contestant: Contestant) -> str:
    if contestant.engine == SERIAL:
        return "serial"
    if contestant.peer:
        return "peer"
    if contestant.unfused:
        return "madhatter unfused"
    return "reference" if contestant.reference else "madhatter"


def run_workload(
    workload: Workload, sides: dict[Engine, DaskSide | RaySide], *, quick: bool, repeats: int
) -> tuple[dict[str, Any], list[Verdict]]:
    n = workload.quick_size if quick else workload.size
    warmup = max(1, n // 50)
    print(f"\n{workload.key} {workload.title}: n={n:,}, warm-up n={warmup:,}, best of {repeats}")
    contestants = [Contestant(SERIAL, "serial loop", workload.serial, peer=False)]
    for side in sides.values():
        contestants.extend(side.contestants(workload))
    timings = measure(contestants, n, repeats=repeats, warmup=warmup)
    serial = timings[0]
    print(f"  {'engine':<8}{'contestant':<28}{'best s':>9}{'median s':>10}{'speed-up':>10}{'cores':>7}")
    rows: dict[str, Any] = {}
    for contestant, t in zip(contestants, timings, strict=True):
        speedup = serial.best / t.best
        rows[t.name] = {
            "engine": contestant.engine,
            "role": role(contestant),
            "seconds": t.seconds,
            "cores_busy": t.cores,
            "best": t.best,
            "speed-up": speedup,
            "note": t.note,
        }
        note = f"  ({t.note})" if t.note else ""
        if contestant.reference:
            note = "  (reference, not a peer: results boxed against Dask's per-item serialisation)"
        cores = "-" if t.best_cores is None else f"{t.best_cores:.2f}"
        print(
            f"  {contestant.engine:<8}{t.name:<28}{t.best:>9.3f}{statistics.median(t.seconds):>10.3f}"
            f"{speedup:>9.2f}x{cores:>7}{note}"
        )
    verdicts = []
    for engine in sides:
        group = [(c, t) for c, t in zip(contestants, timings, strict=True) if c.engine == engine]
        mad = next(t for c, t in group if role(c) == "madhatter")
        best = min((t for c, t in group if c.peer), key=lambda t: t.best)
        if workload.key == "W1":
            met = mad.best <= W1_TOLERANCE * best.best
        else:
            met = mad.best < best.best
        verdict = Verdict(
            workload.key, engine, mad.best, best.name, best.best, workload.target, met,
            round_ratios(best, mad),
        )  # fmt: skip
        verdicts.append(verdict)
        print(
            f"  {engine}: madhatter {verdict.vs_peer:.2f}x the speed of the best hand-written peer "
            f"({best.name}; per round {format_spread(verdict.spread)}), "
            f"{serial.best / mad.best:.2f}x the serial loop"
        )
        for c, t in group:
            if c.reference:
                ratio = t.best / mad.best
                print(f"  {engine}: madhatter {ratio:.2f}x the speed of {t.name} (reference)")
            if c.unfused:
                unfused = Verdict(
                    f"{workload.key} unfused", engine, t.best, "madhatter fused", mad.best,
                    f"<= {UNFUSED_TOLERANCE:g} x fused", t.best <= UNFUSED_TOLERANCE * mad.best,
                    round_ratios(mad, t),
                )  # fmt: skip
                verdicts.append(unfused)
                print(
                    f"  {engine}: madhatter unfused takes {t.best / mad.best:.2f}x the fused time "
                    f"(per round {format_spread(unfused.spread, invert=True)})"
                )
    return {"n": n, "contestants": rows}, verdicts


def round_ratios(peer: Timing, mad: Timing) -> tuple[float, float] | None:
    """The lowest and highest of the per-round ratios peer/madhatter (rounds both were timed in:
    neighbours in time), or None with fewer than two such rounds."""
    ratios = [p / m for p, m in zip(peer.seconds, mad.seconds, strict=False)]
    return (min(ratios), max(ratios)) if len(ratios) > 1 else None


def format_spread(spread: tuple[float, float] | None, *, invert: bool = False) -> str:
    if spread is None:
        return "one round"
    low, high = (1 / spread[1], 1 / spread[0]) if invert else spread
    return f"{low:.2f}-{high:.2f}x"


def print_summary(verdicts: list[Verdict]) -> None:
    headers = ("workload", "engine", "madhatter", "best peer", "vs peer", "per round", "target")
    headers = (*headers, "met")
    cells = [
        (
            v.workload,
            v.engine,
            f"{v.madhatter:.3f} s",
            f"{v.best_peer} {v.peer_seconds:.3f} s",
            f"{v.vs_peer:.2f}x",
            format_spread(v.spread),
            v.target,
            "yes" if v.met else "NO",
        )
        for v in verdicts
    ]
    widths = [max(len(row[i]) for row in [headers, *cells]) for i in range(len(headers))]
    print(
        "\nSummary (vs peer: the best hand-written peer's time on the same engine divided by "
        "madhatter's: above 1 means madhatter is faster)"
    )
    for row in [headers, *cells]:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one round (< 90 s)")
    parser.add_argument("--only", choices=ENGINES, help="one engine only (default: both)")
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    parser.add_argument("--repeats", type=int, help="timed rounds (default: 3, or 1 with --quick)")
    parser.add_argument(
        "--workload", action="append", choices=[*WORKLOADS, "D1"], help="only these (repeatable)"
    )
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    wanted = [args.only] if args.only else list(ENGINES)
    checks = {"dask": dask_unavailable, "ray": ray_unavailable}
    reasons = {engine: checks[engine]() for engine in wanted}
    engines = [engine for engine in wanted if reasons[engine] is None]
    for engine in wanted:
        if reasons[engine] is not None:
            print(f"{engine}: skipped: {reasons[engine]}")
    if not engines:
        return 1

    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # unwinds the stack below: clusters stop
    started = time.perf_counter()
    loops_per_second = calibrate()
    set_calibration(loops_per_second)  # before the clusters start: their workers read it
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [BENCHMARKS_DIR, os.environ.get("PYTHONPATH")])
    )
    load_before = os.getloadavg()[0]
    print(
        f"madhatter {madhatter.__version__} | Python {platform.python_version()} | "
        f"{os.cpu_count()} CPUs | {WORKERS} workers | mode: {'quick' if args.quick else 'full'} | "
        f"load average {load_before:.2f}"
    )
    if load_before > BUSY_LOAD:
        print(f"warning: the machine is busy (load {load_before:.2f}): figures will be distorted")
    print(
        f"calibration: {loops_per_second / 1e6:.1f}M spin rounds/s -> W1 {bench_local.W1_LOOPS:,} "
        f"rounds (~{W1_ITEM_SECONDS * 1e3:g} ms), W3 {bench_local.W3_LOOPS} rounds "
        f"(~{W3_STEP_SECONDS * 1e6:g} us)"
    )
    results: dict[str, Any] = {}
    verdicts: list[Verdict] = []
    with contextlib.ExitStack() as stack:
        sides: dict[Engine, DaskSide | RaySide] = {}
        for engine in engines:
            sides[engine] = DaskSide(stack) if engine == "dask" else RaySide(stack)
            print(sides[engine].describe())
        signal.signal(signal.SIGTERM, _exit_on_sigterm)  # again: ray.init replaces it with its own
        idle = idle_cores(IDLE_SECONDS)
        print(f"idle clusters: {idle:.2f} cores busy on their own (measured over {IDLE_SECONDS:g} s)")
        for workload in WORKLOADS.values():
            if args.workload and workload.key not in args.workload:
                continue
            results[workload.key], workload_verdicts = run_workload(
                workload, sides, quick=args.quick, repeats=repeats
            )
            verdicts.extend(workload_verdicts)
        stopping = time.perf_counter()
    print(f"clusters stopped in {time.perf_counter() - stopping:.1f} s")
    if "dask" in engines and (not args.workload or "D1" in args.workload):
        results["D1"] = run_driver_cpu(quick=args.quick, repeats=repeats)
    print_summary(verdicts)
    elapsed = time.perf_counter() - started
    print(f"\ntotal {elapsed:.0f} s")
    if args.json:
        document = {
            **machine_facts(),
            "mode": "quick" if args.quick else "full",
            "repeats": repeats,
            "engines": engines,
            "skipped": {engine: reasons[engine] for engine in wanted if reasons[engine]},
            "loops_per_second": loops_per_second,
            "load_average_before": load_before,
            "idle_cores": idle,
            "seconds": elapsed,
            "workloads": results,
            "summary": [{**dataclasses.asdict(v), "vs_peer": v.vs_peer} for v in verdicts],
        }
        with open(args.json, "w") as file:
            json.dump(document, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
