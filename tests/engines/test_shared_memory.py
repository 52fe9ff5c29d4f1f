"""Large buffers cross the processes engine through shared memory, and nothing of it outlives a run.

The proof that an array was not pickled through the socket is where its bytes live: a worker sees
its argument, and the driver its result, inside a mapping of madhatter's anonymous shared file
(``/memfd:madhatter`` in ``/proc/self/maps``), and the message that carried it is small.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import madhatter
import madhatter.engines.processes as processes
from madhatter import Pipeline, depends, parallel, preprocess
from madhatter.engines import Task
from madhatter.engines.processes import ProcessesEngine
from process_helpers import MADHATTER, default_sigint

pytestmark = pytest.mark.skipif(
    not hasattr(os, "memfd_create"), reason="shared memory needs memfd_create (Linux)"
)

BIG = 8 * 1024 * 1024  # float64 items: 64 MB


def mapping_of(address: int) -> str:
    """The name of this process's mapping that holds ``address`` ('' for anonymous memory)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            low, high = (int(bound, 16) for bound in fields[0].split("-"))
            if low <= address < high:
                return fields[5].strip() if len(fields) > 5 else ""
    raise AssertionError(f"address {address:#x} is not mapped")


def address(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


def shared(array: np.ndarray) -> bool:
    return mapping_of(address(array)).startswith("/memfd:madhatter")


# -- a 64 MB array, there and back ----------------------------------------------------------


@preprocess
def one_big_array() -> list[np.ndarray]:
    return [np.arange(BIG, dtype=np.float64)]


@depends(one_big_array)
@parallel.map
def where_it_arrived(array: np.ndarray) -> tuple[bool, np.ndarray]:
    """Say whether the argument lives in shared memory here, and send back a new array."""
    return shared(array), array * 2


def test_a_64_mb_array_travels_both_ways_through_shared_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    messages: list[int] = []
    real = processes.dumps_data

    def measured(value: Any) -> bytes:
        data = real(value)
        messages.append(len(data))
        return data

    monkeypatch.setattr(processes, "dumps_data", measured)
    [(arrived_shared, doubled)] = madhatter.run(
        Pipeline([one_big_array, where_it_arrived]), engine="processes", workers=1, inline=False
    )
    assert arrived_shared, "the worker's argument was not mapped from madhatter's shared file"
    assert shared(doubled), "the driver's result was not mapped from madhatter's shared file"
    assert np.array_equal(doubled, np.arange(BIG, dtype=np.float64) * 2)
    assert doubled.flags.writeable
    assert messages
    assert max(messages) < 64 * 1024, f"message sizes {messages}"


def held_back(array: np.ndarray) -> float:
    return float(array[-1])


def test_an_engine_sends_arrays_above_the_threshold_beside_the_message() -> None:
    """Straight through the engine: small arrays stay in the stream, large ones do not."""
    small, large = np.ones(1000), np.ones(2 * 1024 * 1024)
    with ProcessesEngine(workers=2) as engine:
        futures = [
            engine.submit(Task(f"t{i}", held_back, "f", a)) for i, a in enumerate([small, large] * 4)
        ]
        assert [f.result(timeout=60).value for f in futures] == [1.0] * 8


# -- a large run parameter is one file for all workers ----------------------------------------


@preprocess
def indices() -> list[int]:
    return list(range(8))


@depends(indices)
@parallel.map(chunk_by=1)
def look_up(i: int, table: Any = None) -> tuple[int, bool, float]:
    return os.getpid(), shared(table), float(table[i])


def test_a_large_run_parameter_is_mapped_by_every_worker_from_one_file() -> None:
    table = np.arange(4 * 1024 * 1024, dtype=np.float64)  # 32 MB
    answers = madhatter.run(
        Pipeline([indices, look_up]),
        engine="processes",
        workers=2,
        inline=False,
        params={"table": table},
    )
    assert [value for _, _, value in answers] == [float(i) for i in range(8)]
    assert all(is_shared for _, is_shared, _ in answers), answers


# -- nothing left behind ------------------------------------------------------------------------


def shm_names() -> set[str]:
    """The shared-memory segments in /dev/shm; POSIX semaphores (``sem.*``, which other processes'
    multiprocessing locks make and remove as they run) are not segments and are left out."""
    return {name for name in os.listdir("/dev/shm") if not name.startswith("sem.")}


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@depends(one_big_array)
@parallel.map
def fails(array: np.ndarray) -> float:
    raise ValueError("no")


def test_no_shared_file_outlives_a_finished_or_failed_run() -> None:
    before_shm, before_fds = shm_names(), open_descriptors()
    for _ in range(3):
        madhatter.run(
            Pipeline([one_big_array, where_it_arrived]), engine="processes", workers=2, inline=False
        )
        with pytest.raises(madhatter.StepFailed):
            madhatter.run(Pipeline([one_big_array, fails]), engine="processes", workers=2, inline=False)
    assert shm_names() == before_shm
    assert open_descriptors() == before_fds


KILLABLE = """
import os, sys, time
import numpy as np
from madhatter import depends, parallel, preprocess

@preprocess
def arrays():
    return [np.full(2 * 1024 * 1024, i, dtype=np.float64) for i in range(40)]

@depends(arrays)
@parallel.map(chunk_by=1)
def slow_sum(a):
    print("working", flush=True)
    time.sleep(0.2)
    return float(a.sum())
"""


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_no_shared_file_or_process_outlives_an_interrupted_or_killed_driver(
    how: str,
    tmp_path: pathlib.Path,
    session_pids: Callable[[int], list[int]],
    wait_until: Callable[..., bool],
) -> None:
    pipeline = tmp_path / "killable.py"
    pipeline.write_text(textwrap.dedent(KILLABLE))
    before = shm_names()
    command = [
        str(MADHATTER),
        "run",
        str(pipeline),
        "--engine",
        "processes",
        "--workers",
        "2",
        "--no-inline",
    ]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=default_sigint,
    ) as process:
        try:
            assert process.stdout is not None
            assert wait_until(lambda: len(session_pids(process.pid)) >= 3, timeout=60)
            process.stdout.readline()  # a worker is in the step, holding a shared argument
            os.killpg(process.pid, signal.SIGINT) if how == "SIGINT" else os.kill(
                process.pid, signal.SIGKILL
            )
            process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
    assert process.returncode == (130 if how == "SIGINT" else -signal.SIGKILL)
    assert wait_until(lambda: not session_pids(process.pid), timeout=10), session_pids(process.pid)
    assert shm_names() == before


KILLED_ONCE = "killed-once"


@depends(one_big_array)
@parallel.map(retries=1)
def dies_once(array: np.ndarray) -> float:
    marker = pathlib.Path(os.environ["MADHATTER_TEST_MARKER"])
    if not marker.exists():
        marker.write_text(KILLED_ONCE)
        os.kill(os.getpid(), signal.SIGKILL)
    return float(array[1])


def test_a_worker_killed_while_holding_a_shared_argument_leaves_nothing(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MADHATTER_TEST_MARKER", str(tmp_path / "marker"))
    before_shm, before_fds = shm_names(), open_descriptors()
    assert madhatter.run(
        Pipeline([one_big_array, dies_once]), engine="processes", workers=2, inline=False
    ) == [1.0]
    assert (tmp_path / "marker").read_text() == KILLED_ONCE
    assert shm_names() == before_shm
    assert open_descriptors() == before_fds


# -- the same output on every local engine -----------------------------------------------------


@preprocess
def mixed_payloads() -> list[Any]:
    rng = np.random.default_rng(7)
    return [
        rng.random(300_000),  # 2.4 MB: shared
        np.arange(10),  # small: in the stream
        bytes(range(256)) * 8192,  # 2 MB bytes
        bytearray(b"x" * (3 << 20)),
        {"nested": rng.random((700, 300)), "label": "matrix"},
        np.asfortranarray(rng.random((600, 600))),  # not C-contiguous: pickled another way
    ]


@depends(mixed_payloads)
@parallel.map(chunk_by=1)
def echo(value: Any) -> Any:
    return value


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


@pytest.mark.parametrize("engine", ["serial", "threads", "processes"])
def test_payloads_come_back_identical_on_every_local_engine(engine: str) -> None:
    expected = mixed_payloads()
    got = madhatter.run(Pipeline([mixed_payloads, echo]), engine=engine, workers=2, inline=False)
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=False):
        assert same(a, b), (type(a), type(b))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
