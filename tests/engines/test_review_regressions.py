"""Regressions found in review: each test failed (or hung) before its fix."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import madhatter
from madhatter import Pipeline, depends, parallel, postprocess, preprocess
from madhatter.engines.processes import ProcessesEngine
from madhatter.engines.threads import ThreadsEngine
from madhatter.events import ChunkRetried
from madhatter.testing import RecordingListener

MARKER = "MADHATTER_TEST_MARKER"


@preprocess
def four() -> list[int]:
    return list(range(4))


@depends(four)
@parallel.map(chunk_by=1, timeout=0.5, retries=1)
def stuck_outside_python_once(x: int) -> int:
    marker = pathlib.Path(os.environ[MARKER])
    if x == 0 and not marker.exists():
        marker.touch()
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])  # the alarm cannot stop it
        time.sleep(3)
    return x


def test_a_timed_out_worker_is_replaced_before_it_gets_another_task(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MARKER, str(tmp_path / "stuck"))
    events = RecordingListener()
    result = madhatter.run(stuck_outside_python_once, engine="processes", workers=1, listeners=[events])
    assert result == [0, 1, 2, 3]
    retried = [(e.chunk, e.attempt) for e in events.of_type(ChunkRetried)]  # type: ignore[attr-defined]
    assert retried == [(0, 1)]  # only the chunk that overran, not the one waiting behind it


DEADLOCK_SCRIPT = """
import time, madhatter
from madhatter import depends, parallel, postprocess, preprocess

BIG = b"y" * 2_000_000  # step b's code carries it: a function message larger than the pipe

@preprocess
def src():
    return list(range(4))

@depends(src)
@parallel.map(chunk_by=1)
def a(x):
    time.sleep(0.2)
    return "x" * 1_000_000  # answers larger than the pipe

@depends(src)
@parallel.map(chunk_by=1)
def b(x):
    return len(BIG) + x

@depends(a, b)
@postprocess
def out(xs, ys):
    return len(xs), ys

if __name__ == "__main__":
    print(madhatter.Pipeline([src, a, b, out]).run(engine="processes", workers=1, inline=False))
"""


def test_large_messages_to_a_busy_worker_do_not_deadlock(tmp_path: pathlib.Path) -> None:
    script = tmp_path / "big.py"
    script.write_text(DEADLOCK_SCRIPT)
    try:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the processes engine deadlocked on large messages")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str((4, [2_000_000 + x for x in range(4)]))


@preprocess
def ten() -> list[int]:
    return list(range(10))


@depends(ten)
@parallel.map(retries=1)  # retries keep it on the engine
def square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("make_engine", [lambda: ProcessesEngine(2), lambda: ThreadsEngine(2)])
def test_an_engine_instance_serves_several_runs(make_engine: Any) -> None:
    pipeline = Pipeline([ten, square])
    with make_engine() as engine:
        assert pipeline.run(engine=engine) == [x * x for x in range(10)]
        assert pipeline.run(engine=engine) == [x * x for x in range(10)]


def test_workers_for_an_engine_instance_is_an_error() -> None:
    with ThreadsEngine(2) as engine, pytest.raises(TypeError, match="constructor"):
        Pipeline([ten, square]).run(engine=engine, workers=4)


@preprocess
def many() -> range:
    return range(20_000)


@depends(many)
@parallel.map
def doubled(x: int) -> int:
    return x * 2


@depends(doubled)
@postprocess(stream=True)
def lazily_refiltered(xs: Any) -> Any:
    return (x for x in xs if x % 3)


@depends(lazily_refiltered)
@parallel.map
def plus_one(x: int) -> int:
    return x + 1


@depends(plus_one)
@postprocess
def count_and_sum(ys: list[int]) -> tuple[int, int]:
    return len(ys), sum(ys)


def test_a_stream_step_can_feed_a_parallel_step(engine: str) -> None:
    expected = [x * 2 for x in range(20_000) if (x * 2) % 3]
    pipeline = Pipeline([many, doubled, lazily_refiltered, plus_one, count_and_sum])
    assert pipeline.run(engine=engine, workers=2) == (len(expected), sum(e + 1 for e in expected))


def test_a_lazy_result_is_read_before_the_run_ends(engine: str) -> None:
    result = Pipeline([many, doubled, lazily_refiltered]).run(engine=engine, workers=2)
    assert result == [x * 2 for x in range(20_000) if (x * 2) % 3]


@depends(many)
@parallel.map(chunk_by=10)
def bad_at_500(x: int) -> int:
    if x == 500:
        raise ValueError("bad item")
    time.sleep(0.0005)
    return x


@depends(bad_at_500)
@postprocess(stream=True)
def streamed_total(xs: Any) -> int:
    return sum(xs)


def test_a_stream_step_does_not_take_the_blame_for_its_upstream() -> None:
    with pytest.raises(madhatter.StepFailed) as caught:
        Pipeline([many, bad_at_500, streamed_total]).run(engine="threads", workers=2)
    assert caught.value.step == "bad_at_500"


@depends(many)
@parallel.map(chunk_by=10)
def slow_item(x: int) -> int:
    time.sleep(0.001)  # 20,000 items: 20 s of work, cancelled after 0.2 s
    return x


@depends(slow_item)
@postprocess(stream=True)
def slow_total(xs: Any) -> int:
    return sum(xs)


def test_cancelling_while_a_stream_step_reads_is_a_cancellation() -> None:
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    with pytest.raises(madhatter.RunCancelled):
        Pipeline([many, slow_item, slow_total]).run(engine="threads", workers=1, cancel=cancel)
