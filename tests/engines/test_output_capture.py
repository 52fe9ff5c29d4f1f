"""What steps print and log reaches the run as ``ChunkOutput`` events, per step and chunk, on
every local engine, bounded per chunk and per run, and what a failing chunk printed first too."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from madhatter import Pipeline, StepFailed, depends, parallel, postprocess, preprocess
from madhatter.driver._capture import CHUNK_OUTPUT_BYTES
from madhatter.driver._context import RUN_OUTPUT_CHARACTERS
from madhatter.events import ChunkOutput
from madhatter.testing import RecordingListener

logger = logging.getLogger("madhatter_test_capture")


@preprocess
def numbers() -> list[int]:
    return list(range(12))


@depends(numbers)
@parallel.map(chunk_by=4)
def shout(x: int) -> int:
    print(f"hello {x}")
    logger.warning("warned %d", x)
    return x


@depends(shout)
@parallel.map(chunk_by=4)
def whisper(x: int) -> int:
    print(f"quiet {x}", file=__import__("sys").stderr)
    return x + 1


@depends(whisper)
@postprocess
def collect(values: list[int]) -> list[int]:
    print("the driver's own print is not a chunk's")
    return values


def _run(engine: str, *steps: Any, **options: Any) -> tuple[Any, RecordingListener]:
    listener = RecordingListener()
    report = Pipeline(list(steps)).execute(
        engine=engine, workers=2, inline=False, capture_output=True, listeners=[listener], **options
    )
    return report, listener


def test_prints_and_logs_arrive_under_their_step_and_chunk(engine: str) -> None:
    report, listener = _run(engine, numbers, shout, whisper, collect)
    assert report.result == [x + 1 for x in range(12)]
    by_place: dict[tuple[str, int, str], str] = {}
    for event in listener.of_type(ChunkOutput):
        key = (event.step, event.chunk, event.stream)
        by_place[key] = by_place.get(key, "") + event.text
    for x in range(12):
        chunk = x // 4
        assert f"hello {x}\n" in by_place[("shout", chunk, "stdout")]
        assert f"WARNING madhatter_test_capture: warned {x}\n" in by_place[("shout", chunk, "log")]
        assert f"quiet {x}\n" in by_place[("whisper", chunk, "stderr")]
    assert not any("driver's own" in text for text in by_place.values())


def test_nothing_is_captured_unless_asked(capsys: pytest.CaptureFixture[str]) -> None:
    listener = RecordingListener()
    Pipeline([numbers, shout, whisper, collect]).execute(engine="threads", listeners=[listener])
    assert not listener.of_type(ChunkOutput)
    assert "hello 3" in capsys.readouterr().out  # printed as usual


@depends(numbers)
@parallel.map(chunk_by=12)
def fails_late(x: int) -> int:
    print(f"before {x}")
    if x == 5:
        raise ValueError("item five")
    return x


def test_a_failing_chunk_keeps_what_it_printed_first(engine: str) -> None:
    listener = RecordingListener()
    with pytest.raises(StepFailed):
        Pipeline([numbers, fails_late]).execute(
            engine=engine, workers=2, inline=False, capture_output=True, listeners=[listener]
        )
    text = "".join(e.text for e in listener.of_type(ChunkOutput))
    assert "before 5\n" in text


@depends(numbers)
@parallel.map(chunk_by=1)
def chatty(x: int) -> int:
    print("x" * (CHUNK_OUTPUT_BYTES * 2))  # twice what a chunk may keep
    return x


def test_output_is_bounded_per_chunk() -> None:
    _, listener = _run("threads", numbers, chatty)
    per_chunk: dict[int, str] = {}
    for event in listener.of_type(ChunkOutput):
        per_chunk[event.chunk] = per_chunk.get(event.chunk, "") + event.text
    assert len(per_chunk) == 12
    assert all("more characters of this chunk's output dropped" in t for t in per_chunk.values())
    assert all(len(t) < CHUNK_OUTPUT_BYTES + 200 for t in per_chunk.values())


def test_output_is_bounded_per_run_with_one_mark(monkeypatch: pytest.MonkeyPatch) -> None:
    limit = 3 * CHUNK_OUTPUT_BYTES  # a small budget: 12 chunks of 64 KiB would need 4x that
    monkeypatch.setattr("madhatter.driver._context.RUN_OUTPUT_CHARACTERS", limit)
    _, listener = _run("threads", numbers, chatty)
    texts = [event.text for event in listener.of_type(ChunkOutput)]
    assert sum("the run's limit" in text for text in texts) == 1
    assert sum(len(text) for text in texts) <= limit + 200
    assert RUN_OUTPUT_CHARACTERS == 10 * 1024 * 1024
