"""The processes engine works with every start method, shared memory included: with ``spawn`` and
``forkserver`` the worker's socket is pickled to the child, and a ``forkserver`` worker's parent
is the fork server, not the driver."""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver

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
