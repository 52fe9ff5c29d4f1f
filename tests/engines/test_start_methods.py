"""The processes engine works with every start method, shared memory included: with ``spawn`` and
``forkserver`` the worker's socket is pickled to the child, and a ``forkserver`` worker's parent
is the fork server, not the driver."""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import pathlib
import subprocess
import sys
import textwrap
import threading
import types

import numpy as np
import pytest

from madhatter.engines import Task
from madhatter.engines.processes import ProcessesEngine


def total(array: np.ndarray) -> float:
    return float(array.sum())


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_tasks_and_shared_arrays_work_with_every_start_method(method: str) -> None:
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{method} is not available on this platform")
    arrays = [np.full(1 << 18, i, dtype=np.float64) for i in range(6)]  # 2 MB each: shared
    try:
        with ProcessesEngine(workers=2, start_method=method) as engine:
            futures = [engine.submit(Task(f"t{i}", total, "total", a)) for i, a in enumerate(arrays)]
            assert [f.result(timeout=60).value for f in futures] == [float(a.sum()) for a in arrays]
    finally:
        if method == "forkserver":  # the fork server lives as long as this process: stop it, so
            multiprocessing.forkserver._forkserver._stop()  # later tests see no stray children


# -- the default: fork only a single-threaded driver ----------------------------------------------

HELD = threading.Lock()
"""Held by a driver thread while workers start: a forked worker would inherit it held forever."""


def under_the_lock(x: int) -> tuple[int, bool]:
    """Takes the lock a driver thread holds, as user code that logs or imports would; says whether
    the worker is a copy of the driver (it has the module only the test imported)."""
    with HELD:
        return x * 2, "madhatter_driver_only_marker" in sys.modules


def run_while_a_thread_holds_the_lock() -> list[tuple[int, bool]]:
    release = threading.Event()
    holding = threading.Event()

    def hold() -> None:
        with HELD:
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(10)
    try:
        with ProcessesEngine(workers=2) as engine:
            futures = [
                engine.submit(Task(f"t{i}", under_the_lock, "under", i, timeout=20)) for i in range(6)
            ]
            return [future.result(timeout=60).value for future in futures]
    finally:
        release.set()
        holder.join()


def test_a_driver_with_threads_starts_fresh_workers_that_cannot_inherit_a_held_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The worker takes the lock a driver thread holds while the workers start. A forked worker's
    # copy of that lock would stay held forever (the task would time out); a fresh one's is free.
    monkeypatch.setitem(sys.modules, "madhatter_driver_only_marker", types.ModuleType("marker"))
    assert run_while_a_thread_holds_the_lock() == [(x * 2, False) for x in range(6)]


def test_a_driver_with_one_thread_forks_its_workers() -> None:
    # Run in a fresh interpreter: pytest's own process may have threads left by other tests.
    script = textwrap.dedent(
        """
        import sys, threading, types
        sys.modules["madhatter_driver_only_marker"] = types.ModuleType("marker")
        from madhatter.engines import Task
        from madhatter.engines.processes import ProcessesEngine
        from test_start_methods import under_the_lock
        assert threading.active_count() == 1
        with ProcessesEngine(workers=2) as engine:
            print(engine.submit(Task("t", under_the_lock, "under", 4)).result(timeout=60).value)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=pathlib.Path(__file__).parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(8, True)"  # a copy of the driver: forked
