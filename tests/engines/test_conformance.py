"""One suite for every engine: each gives the same output as ``serial``, the reference.

The steps are module-level functions, so worker processes get them by reference; state that must
be seen across processes (how often setup ran, whether a flaky step already failed) lives in files
under ``tmp_path``, whose path reaches the steps as a run parameter or through ``functools.partial``.
"""

from __future__ import annotations

import functools
import os
import pathlib
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import madhatter
from madhatter import Pipeline, depends, parallel, postprocess, preprocess
from madhatter._events import ChunkDone, ChunkRetried, RunFinished
from madhatter.testing import RecordingListener

HELLO = pathlib.Path(__file__).resolve().parents[2] / "examples" / "hello.py"


def run_both(target: Any, engine: str, **options: Any) -> tuple[Any, Any]:
    """The result on ``engine`` and on ``serial``, with the same options."""
    return (
        madhatter.run(target, engine=engine, workers=2, **options),
        madhatter.run(target, engine="serial", **options),
    )


# -- the hello example -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hello() -> Pipeline:
    return Pipeline.from_module(HELLO)


@pytest.mark.parametrize("inline", [True, False])
def test_hello_example(engine: str, hello: Pipeline, inline: bool) -> None:
    result, reference = run_both(hello, engine, inline=inline)
    assert result == reference == [1, 2, 3, 4]


# -- fan-out / fan-in --------------------------------------------------------------------------


@preprocess
def numbers() -> list[int]:
    return list(range(40))


@depends(numbers)
@parallel.map(chunk_by=3)
def tripled(x: int) -> int:
    return 3 * x


@depends(numbers)
@parallel.filter
def odd(x: int) -> bool:
    return x % 2 == 1


@depends(tripled)
@parallel
def pairs(chunk: list[int]) -> list[tuple[int, int]]:
    return [(x, x + 1) for x in chunk]


@depends(pairs, odd, numbers)
@postprocess
def gathered(p: list[tuple[int, int]], o: list[int], n: list[int]) -> dict[str, Any]:
    return {"pairs": p, "odd": o, "count": len(n)}


def test_fan_out_fan_in(engine: str) -> None:
    result, reference = run_both(gathered, engine)
    assert result == reference
    assert result["pairs"] == [(3 * x, 3 * x + 1) for x in range(40)]
    assert result["odd"] == list(range(1, 40, 2))
    assert result["count"] == 40


@depends(tripled)
@parallel.map
def left(x: int) -> int:
    return x + 1


@depends(tripled)
@parallel.map(chunk_by=7)
def right(x: int) -> int:
    return -x


@depends(left, right)
@postprocess
def diamond(a: list[int], b: list[int]) -> list[int]:
    return [x + y for x, y in zip(a, b, strict=True)]


@pytest.mark.parametrize("inline", [True, False])
def test_diamond_from_a_parallel_step(engine: str, inline: bool) -> None:
    result, reference = run_both(diamond, engine, inline=inline)
    assert result == reference == [1] * 40


# -- generator sources -------------------------------------------------------------------------


@preprocess
def generated(count: int = 30) -> Iterator[int]:
    yield from range(count)


@depends(generated)
@parallel.map(chunk_by=4)
def squared(x: int) -> int:
    return x * x


@depends(generated)
@parallel.filter
def multiples_of_three(x: int) -> bool:
    return x % 3 == 0


@depends(squared, multiples_of_three)
@postprocess
def both_branches(a: list[int], b: list[int]) -> tuple[list[int], list[int]]:
    return a, b


@pytest.mark.parametrize("inline", [True, False])
def test_generator_source(engine: str, inline: bool) -> None:
    result, reference = run_both(squared, engine, inline=inline)
    assert result == reference == [x * x for x in range(30)]


def test_generator_source_read_by_two_steps(engine: str) -> None:
    result, reference = run_both(both_branches, engine)
    assert result == reference == ([x * x for x in range(30)], list(range(0, 30, 3)))


def broken_generator() -> Iterator[int]:
    yield 1
    yield 2
    raise LookupError("the source ran dry")


@preprocess
def flaky_source() -> Iterator[int]:
    return broken_generator()


@depends(flaky_source)
@parallel.map
def passthrough(x: int) -> int:
    return x


def test_a_generator_source_failing_midway_names_the_source(engine: str) -> None:
    with pytest.raises(madhatter.StepFailed, match="step 'flaky_source' failed") as caught:
        madhatter.run(passthrough, engine=engine, workers=2)
    assert isinstance(caught.value.__cause__, LookupError)
    assert "the source ran dry" in caught.value.remote_traceback


@depends(generated)
@postprocess
def whole_of_generated(values: list[int]) -> tuple[str, int]:
    return type(values).__name__, sum(values)


def test_a_postprocess_after_a_generator_source_gets_a_list(engine: str) -> None:
    # "@postprocess -- called once in the driver with the whole upstream result (a list ...)"
    assert madhatter.run(whole_of_generated, engine=engine, workers=2) == ("list", sum(range(30)))


# -- order -------------------------------------------------------------------------------------


def uneven_work(x: int) -> int:
    time.sleep(0.002 * (x % 4))  # later chunks can finish first
    return x * 7


@depends(numbers)
@parallel.map(chunk_by=2)
def in_order(x: int) -> int:
    return uneven_work(x)


@depends(numbers)
@parallel.map(chunk_by=2, ordered=False)
def any_order(x: int) -> int:
    return uneven_work(x)


def test_ordered_output_keeps_input_order(engine: str) -> None:
    result, reference = run_both(in_order, engine, inline=False)
    assert result == reference == [x * 7 for x in range(40)]


def test_unordered_output_has_the_same_items(engine: str) -> None:
    result, reference = run_both(any_order, engine, inline=False)
    assert sorted(result) == sorted(reference) == [x * 7 for x in range(40)]
    assert len(result) == 40


# -- shipping ----------------------------------------------------------------------------------


@depends(numbers)
@parallel.map(chunk_by=5)
def where(x: int) -> tuple[int, int, int]:
    return x, os.getpid(), threading.get_ident()


def test_inline_false_sends_every_chunk_to_the_engine(engine: str) -> None:
    listener = RecordingListener()
    result = madhatter.run(where, engine=engine, workers=2, inline=False, listeners=[listener])
    assert [x for x, _, _ in result] == list(range(40))
    workers = {event.worker for event in listener.of_type(ChunkDone)}  # type: ignore[attr-defined]
    assert "driver" not in workers
    if engine == "processes":
        assert os.getpid() not in {pid for _, pid, _ in result}
        assert all(name.startswith("pid-") for name in workers)
    if engine == "threads":
        assert threading.get_ident() not in {tid for _, _, tid in result}


def test_inline_true_lets_cheap_steps_start_in_the_driver(engine: str) -> None:
    listener = RecordingListener()
    result = madhatter.run(where, engine=engine, workers=2, listeners=[listener])
    assert [x for x, _, _ in result] == list(range(40))
    first = listener.of_type(ChunkDone)[0]
    # The serial engine runs every chunk in the caller ("main"); no probe is needed to decide.
    assert first.worker == ("main" if engine == "serial" else "driver")  # type: ignore[attr-defined]
    assert result[0][1] == os.getpid()


# -- fused chains ------------------------------------------------------------------------------


@depends(numbers)
@parallel.filter(chunk_by=6)
def not_seven(x: int) -> bool:
    return x % 7 != 0


@depends(not_seven)
@parallel.map
def halved(x: int) -> float:
    return x / 2


@depends(halved)
@parallel
def labelled(chunk: list[float]) -> list[str]:
    return [f"v{x}" for x in chunk]


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("inline", [True, False])
def test_fused_chain(engine: str, fuse: bool, inline: bool) -> None:
    pipeline = Pipeline([labelled])
    stages = [stage.step_names for stage in pipeline.plan(fuse=fuse).stages]
    if fuse:
        assert stages == [("numbers",), ("not_seven", "halved", "labelled")]
    listener = RecordingListener()
    report = pipeline.execute(engine=engine, workers=2, inline=inline, fuse=fuse, listeners=[listener])
    expected = [f"v{x / 2}" for x in range(40) if x % 7 != 0]
    assert report.result == Pipeline([labelled]).run(engine="serial") == expected
    done = listener.of_type(ChunkDone)
    for step, items in (("not_seven", 40), ("halved", 34), ("labelled", 34)):
        assert sum(e.items_in for e in done if e.step == step) == items  # type: ignore[attr-defined]
        assert report.steps[step].items_in == items


# -- run parameters ----------------------------------------------------------------------------


@preprocess
def ranged(stop: int = 5) -> list[int]:
    return list(range(stop))


@depends(ranged)
@parallel.map
def scaled(x: int, factor: int = 2, label: str = "x") -> str:
    return f"{label}{x * factor}"


@pytest.mark.parametrize("inline", [True, False])
def test_run_params(engine: str, inline: bool) -> None:
    params = {"stop": "4", "factor": "10", "label": "n"}
    result, reference = run_both(scaled, engine, params=params, inline=inline)
    assert result == reference == ["n0", "n10", "n20", "n30"]
    assert madhatter.run(scaled, engine=engine, workers=2) == ["x0", "x2", "x4", "x6", "x8"]


# -- per-worker setup --------------------------------------------------------------------------


def identity() -> str:
    return f"{os.getpid()}-{threading.get_ident()}"


def record_setup(directory: str) -> dict[str, str]:
    me = identity()
    pathlib.Path(directory, f"{me}-{uuid.uuid4().hex}").touch()
    return {"tag": me}


@depends(numbers)
@parallel.map(chunk_by=1)
def tagged(x: int, tag: str) -> tuple[int, str, str]:
    return x, tag, identity()


def test_setup_runs_once_per_worker(engine: str, tmp_path: pathlib.Path) -> None:
    setup = functools.partial(record_setup, str(tmp_path))
    step = parallel.map(chunk_by=1, setup=setup)(tagged)
    try:
        result = madhatter.run(step, engine=engine, workers=2)
    finally:
        parallel.map(chunk_by=1)(tagged)  # leave the module-level step as it was
    assert [x for x, _, _ in result] == list(range(40))
    assert all(tag == me for _, tag, me in result)  # each worker got its own setup's values
    setups = [name.rsplit("-", 1)[0] for name in os.listdir(tmp_path)]
    workers = {me for _, _, me in result}
    assert sorted(setups) == sorted(workers)  # once per worker: no worker twice, none missing
    assert len(setups) <= 2


# -- on_error="skip" ---------------------------------------------------------------------------


@depends(numbers)
@parallel.map(chunk_by=4, on_error="skip")
def fragile(x: int) -> int:
    if x % 5 == 3:
        raise ValueError(f"bad item {x}")
    return x * 10


@depends(fragile)
@parallel(on_error="skip")
def fragile_chunks(chunk: list[int]) -> list[int]:
    if 60 in chunk:
        raise KeyError("sixty")
    return [x + 1 for x in chunk]


@pytest.mark.parametrize("inline", [True, False])
def test_skip_collects_exactly_the_failing_items(engine: str, inline: bool) -> None:
    report = Pipeline([fragile]).execute(engine=engine, workers=2, inline=inline)
    assert report.result == [x * 10 for x in range(40) if x % 5 != 3]
    assert sorted(item.item for item in report.skipped) == [3, 8, 13, 18, 23, 28, 33, 38]
    for item in report.skipped:
        assert item.step == "fragile"
        assert item.error == f"ValueError: bad item {item.item}"
        assert item.chunk == item.item // 4
        assert "in fragile" in item.traceback
        assert "raise ValueError" in item.traceback


def test_skip_in_a_chunk_step_and_in_a_fused_chain(engine: str) -> None:
    report = Pipeline([fragile_chunks]).execute(engine=engine, workers=2, inline=False)
    expected = [x * 10 + 1 for x in range(40) if x % 5 != 3 and x != 6]
    assert report.result == expected
    skipped = sorted((item.step, item.item) for item in report.skipped)
    assert skipped == [("fragile", x) for x in (3, 8, 13, 18, 23, 28, 33, 38)] + [("fragile_chunks", 60)]


def test_run_warns_about_skipped_items(engine: str) -> None:
    with pytest.warns(madhatter.SkippedItemsWarning, match=r"8 item\(s\) failed and were skipped"):
        result = madhatter.run(fragile, engine=engine, workers=2)
    assert result == [x * 10 for x in range(40) if x % 5 != 3]


# -- retries -----------------------------------------------------------------------------------


@depends(numbers)
@parallel.map(chunk_by=4)
def flaky(x: int, marker: str = "") -> int:
    if x == 21 and not os.path.exists(marker):
        pathlib.Path(marker).touch()  # fail once: the retry finds the marker
        raise ConnectionError("flaky on 21")
    return x + 100


@pytest.mark.parametrize("inline", [True, False])
def test_retries_recover_a_flaky_step(engine: str, tmp_path: pathlib.Path, inline: bool) -> None:
    step = parallel.map(chunk_by=4, retries=1)(flaky)
    listener = RecordingListener()
    try:
        result = madhatter.run(
            step,
            engine=engine,
            workers=2,
            inline=inline,
            params={"marker": str(tmp_path / "failed-once")},
            listeners=[listener],
        )
    finally:
        parallel.map(chunk_by=4)(flaky)
    assert result == [x + 100 for x in range(40)]
    retried = listener.of_type(ChunkRetried)
    assert [(e.step, e.chunk, e.attempt) for e in retried] == [("flaky", 5, 1)]  # type: ignore[attr-defined]


def test_the_retry_event_says_why(engine: str, tmp_path: pathlib.Path) -> None:
    """``ChunkRetried.error`` (shown as "retry 1: ...") carries the user's error, not just where."""
    step = parallel.map(chunk_by=4, retries=1)(flaky)
    listener = RecordingListener()
    try:
        madhatter.run(
            step,
            engine=engine,
            workers=2,
            params={"marker": str(tmp_path / "failed-once")},
            listeners=[listener],
        )
    finally:
        parallel.map(chunk_by=4)(flaky)
    [retried] = listener.of_type(ChunkRetried)
    assert "ConnectionError: flaky on 21" in retried.error  # type: ignore[attr-defined]


def test_without_retries_the_flaky_step_fails_the_run(engine: str, tmp_path: pathlib.Path) -> None:
    marker = str(tmp_path / "failed-once")
    with pytest.raises(madhatter.StepFailed, match="step 'flaky' failed on chunk 5") as caught:
        madhatter.run(flaky, engine=engine, workers=2, params={"marker": marker})
    assert isinstance(caught.value.__cause__, ConnectionError)
    assert os.path.exists(marker)


# -- nothing keeps running after a run ----------------------------------------------------------

_running: list[int] = []  # items whose call has begun and not ended, in this process
_running_lock = threading.Lock()


@depends(numbers)
@parallel.map(chunk_by=1)
def slow_first_then_fail(x: int) -> int:
    with _running_lock:
        _running.append(x)
    try:
        if x == 0:
            time.sleep(0.5)  # still busy when item 3 fails
        if x == 3:
            raise ValueError("three")
        return x
    finally:
        with _running_lock:
            _running.remove(x)


def test_a_failed_run_leaves_no_step_running(engine: str, wait_until: Any) -> None:
    """When run() raises, none of the run's calls of user code is still going on."""
    assert wait_until(lambda: not _running, timeout=5)  # not even one leaked by an earlier test
    with pytest.raises(madhatter.StepFailed, match="step 'slow_first_then_fail' failed on chunk 3"):
        madhatter.run(slow_first_then_fail, engine=engine, workers=2)
    with _running_lock:
        still_running = list(_running)
    threads = [t.name for t in threading.enumerate() if t.name.startswith("madhatter")]
    assert still_running == []
    assert threads == []


def test_no_thread_of_the_run_remains_after_success(engine: str, wait_until: Any) -> None:
    assert madhatter.run(in_order, engine=engine, workers=2) == [x * 7 for x in range(40)]
    assert wait_until(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("madhatter")],
        timeout=5,
    ), [t.name for t in threading.enumerate()]


# -- timeouts ----------------------------------------------------------------------------------


@preprocess
def few() -> list[int]:
    return [0, 1, 2, 3]


@depends(few)
@parallel.map(chunk_by=1, timeout=0.25)
def sleepy(x: int) -> int:
    if x == 2:
        time.sleep(1.0)
    return x


def test_timeout_raises_task_timeout_naming_the_step(engine: str) -> None:
    listener = RecordingListener()
    with pytest.raises(madhatter.TaskTimeout, match="step 'sleepy' chunk 2 ran longer") as caught:
        madhatter.run(sleepy, engine=engine, workers=2, listeners=[listener])
    assert (caught.value.step, caught.value.chunk, caught.value.timeout) == ("sleepy", 2, 0.25)
    finished = listener.of_type(RunFinished)
    assert [e.status for e in finished] == ["failed"]  # type: ignore[attr-defined]


def test_timeout_leaves_the_callers_alarm_running(engine: str) -> None:
    """A step's timeout must not cancel an alarm the caller set (e.g. pytest-timeout's)."""
    fired: list[int] = []
    previous_handler = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    previous_timer = signal.setitimer(signal.ITIMER_REAL, 60.0)
    try:
        assert madhatter.run(
            parallel.map(chunk_by=1, timeout=5.0)(scaled), engine=engine, workers=2
        ) == ["x0", "x2", "x4", "x6", "x8"]
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    finally:
        parallel.map(scaled)
        signal.setitimer(signal.ITIMER_REAL, *previous_timer)
        signal.signal(signal.SIGALRM, previous_handler)
    assert fired == []
    assert remaining > 0, "the caller's ITIMER_REAL was cancelled by the run"
