"""Helpers of the chaos tests (imported by name: pytest puts this folder on sys.path): the seed,
a seeded killer, the pipeline they run, and a Dask cluster whose workers have nannies (the
service workers are process_helpers.Workers).

**Replaying a failure.** Every case prints its seed (``chaos seed: N``, shown with the output of a
failing test) and takes it from ``MADHATTER_CHAOS_SEED`` when that is set::

    MADHATTER_CHAOS_SEED=1234 python -m pytest tests/chaos

The seed fixes the kill plan (how many kills, when, of what kind, which victim by position among
the candidates); the processes' timing still varies from run to run, so a replay aims at the
same moments, not at the same instructions.

The clusters' workers cannot import this module: its functions travel by value, as a user's
would from a script the workers do not have.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

import cloudpickle
import pytest

from madhatter import Pipeline, depends, parallel, preprocess
from process_helpers import alive as alive
from process_helpers import all_pids, proc_stat, scheduler_address, socket_inodes
from process_helpers import in_session as in_session

cloudpickle.register_pickle_by_value(sys.modules[__name__])

SEED_VARIABLE = "MADHATTER_CHAOS_SEED"

MAX_KILLS = 8
"""At most this many SIGKILLs per case (the brief's bound: 8-10)."""

RETRIES = MAX_KILLS + 2
"""Enough for every kill to land on the same chunk, with room to spare."""

CHUNKS = 2000
ITEMS_PER_CHUNK = 3
ITEMS = CHUNKS * ITEMS_PER_CHUNK


# -- the seed ----------------------------------------------------------------------------------


def chaos_seed() -> int:
    """``MADHATTER_CHAOS_SEED`` if set, else a fresh random seed."""
    text = os.environ.get(SEED_VARIABLE, "").strip()
    return int(text) if text else random.SystemRandom().randrange(2**32)


def case_rng(seed: int, case: str) -> random.Random:
    """One generator per case, so a case's plan does not depend on which other cases ran."""
    return random.Random(f"{seed}/{case}")


# -- the pipeline: 6,000 items in 2,000 chunks, two parallel steps -----------------------------


@preprocess
def chaos_items(n: int = ITEMS) -> list[int]:
    return list(range(n))


@depends(chaos_items)
@parallel.map(chunk_by=ITEMS_PER_CHUNK, retries=RETRIES)
def scramble(x: int) -> int:
    time.sleep(0.0015)  # long enough for the kills to land on running tasks
    return x * x + 1


@depends(scramble)
@parallel.filter(chunk_by=ITEMS_PER_CHUNK, retries=RETRIES)
def not_thirds(y: int) -> bool:
    return y % 3 != 0


CHAOS = Pipeline([chaos_items, scramble, not_thirds])
EXPECTED = [x * x + 1 for x in range(ITEMS) if (x * x + 1) % 3 != 0]

SERVICE_PIPELINE = f"""
import time
from madhatter import depends, parallel, postprocess, preprocess

@preprocess
def chaos_items(n: int = {ITEMS}):
    return list(range(n))

@depends(chaos_items)
@parallel.map(chunk_by={ITEMS_PER_CHUNK}, retries={RETRIES})
def scramble(x):
    time.sleep(0.0015)
    return x * x + 1

@depends(scramble)
@parallel.filter(chunk_by={ITEMS_PER_CHUNK}, retries={RETRIES})
def not_thirds(y):
    return y % 3 != 0

@depends(not_thirds)
@postprocess
def everything(values):
    return values
"""


# -- processes, from /proc -----------------------------------------------------------------------


def children(parent: int) -> list[int]:
    """Living children of a process (not zombies, not multiprocessing's resource tracker)."""
    found = []
    for pid in all_pids():
        stat = proc_stat(pid)
        if stat is None or stat[0] != parent or stat[2] == "Z":
            continue
        try:
            if b"resource_tracker" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
        except OSError:
            continue
        found.append(pid)
    return sorted(found)


def listening_ports(pid: int) -> set[int]:
    """The TCP ports a process listens on (IPv4, from /proc)."""
    inodes = socket_inodes(pid)
    try:
        lines = pathlib.Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return set()
    ports = set()
    for line in lines:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
            ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def shm_entries() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


# -- the killer ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Kill:
    delay: float  # seconds after the previous kill (or the start)
    kind: str  # which candidates: "worker", or the case's one special victim
    pick: float  # which candidate, as a fraction of the sorted list


def plan_kills(
    rng: random.Random, *, special: str | None, first: float, gap: tuple[float, float]
) -> list[Kill]:
    """``MAX_KILLS`` kills at random moments (the first within ``first`` seconds, then ``gap``
    apart), one of them (if ``special``) of that kind, at a random position but not the last."""
    count = MAX_KILLS
    kinds = ["worker"] * count
    if special is not None:
        kinds[rng.randrange(count - 1)] = special
    delays = [rng.uniform(0.05, first)] + [rng.uniform(*gap) for _ in range(count - 1)]
    return [Kill(delay, kind, rng.random()) for delay, kind in zip(delays, kinds, strict=True)]


class Killer(threading.Thread):
    """Carries out a kill plan until told to stop: waits each kill's delay, lists its kind's
    candidates (waiting up to ``patience`` seconds for one to exist), and SIGKILLs one."""

    def __init__(
        self,
        plan: Sequence[Kill],
        candidates: Callable[[str], list[int]],
        *,
        patience: float = 10.0,
        killed: Callable[[str, int], None] | None = None,
    ) -> None:
        super().__init__(name="chaos-killer", daemon=True)
        self.plan, self.candidates, self.patience = list(plan), candidates, patience
        self.on_kill = killed
        self.stopping = threading.Event()
        self.started_at = time.monotonic()
        self.log: list[tuple[float, str, int]] = []  # (seconds since start, kind, pid)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for kill in self.plan:
                if self.stopping.wait(kill.delay):
                    return
                deadline = time.monotonic() + self.patience
                while not (found := self.candidates(kill.kind)):
                    if self.stopping.wait(0.01) or time.monotonic() > deadline:
                        break
                if not found:
                    continue
                victim = found[min(int(kill.pick * len(found)), len(found) - 1)]
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self.log.append((round(time.monotonic() - self.started_at, 2), kill.kind, victim))
                if self.on_kill is not None:
                    self.on_kill(kill.kind, victim)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)

    def kinds(self) -> list[str]:
        return [kind for _, kind, _ in self.log]


# -- a Dask cluster whose workers have nannies -----------------------------------------------------


START_SECONDS = 60


class NannyDaskCluster:
    """A scheduler and two single-threaded workers, each under a nanny that restarts it when it
    dies, as separate processes (each in its own session) listening on 127.0.0.1 only.

    The scheduler gives up on a task only after ``allowed_failures`` workers died running it
    (Dask's default is 3): more than the kills a case makes, so a task that several kills happen
    to hit is rerun rather than failed with ``KilledWorker``.
    """

    def __init__(
        self, folder: pathlib.Path, *, workers: int = 2, allowed_failures: int = 2 * MAX_KILLS
    ) -> None:
        dask = shutil.which("dask", path=os.path.dirname(sys.executable)) or shutil.which("dask")
        if dask is None:
            pytest.skip("the dask extra is not installed (pip install 'madhatter[dask]')")
        self._dask, self._folder = dask, folder
        self._env = {
            **os.environ,
            "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": str(allowed_failures),
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        scheduler_file = folder / "scheduler.json"
        self._start(
            "scheduler",
            "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
            "--scheduler-file", str(scheduler_file),
        )  # fmt: skip
        self.address = scheduler_address(scheduler_file, START_SECONDS)
        self.nannies = [
            self._start(
                "worker",
                self.address,
                "--name",
                f"w{index}",
                "--nthreads",
                "1",
                "--nanny",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
                "--memory-limit",
                "0",
                "--local-directory",
                str(folder / f"w{index}"),
            )
            for index in range(workers)
        ]

    def _start(self, *args: str) -> subprocess.Popen[bytes]:
        with open(self._folder / f"{args[0]}-{len(self.processes)}.log", "wb") as log:
            process = subprocess.Popen(
                [self._dask, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self._env,
            )
        self.processes.append(process)
        return process

    def worker_pids(self) -> list[int]:
        """The worker processes (the nannies' children), not the nannies."""
        return sorted(pid for nanny in self.nannies for pid in children(nanny.pid))

    def worker_pid(self, address: str) -> int | None:
        """The worker process listening at ``address`` (``tcp://127.0.0.1:PORT``)."""
        port = int(address.rpartition(":")[2])
        for pid in self.worker_pids():
            if port in listening_ports(pid):
                return pid
        return None

    def sessions(self) -> list[int]:
        return [process.pid for process in self.processes]

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self._folder.glob("*.log"))
        )

    def stop(self) -> None:
        # SIGTERM to the nannies (and the scheduler) only: sent to a nanny's whole group, it
        # kills the worker too, and the nanny, busy restarting it, may never finish closing.
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # Each nanny's multiprocessing resource tracker outlives it for a moment, unlinking the
        # semaphores (/dev/shm/sem.mp-*) of the worker processes it started.
        deadline = time.monotonic() + 15
        while any(in_session(pid) for pid in self.sessions()) and time.monotonic() < deadline:
            time.sleep(0.05)
