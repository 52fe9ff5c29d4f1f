"""Streaming: endless sources, ``stream=True`` consumers that stop early, and back-pressure."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

import madhatter
from madhatter import Pipeline, depends, parallel, postprocess, preprocess
from madhatter._events import RunFinished
from madhatter.testing import RecordingListener

WORKERS = 2
CHUNK = 10
TAKEN = 1500
SLACK_CHUNKS = 4 * (WORKERS + 1)
"""How far ahead of the consumer the source may run: a few chunks per worker, never the stream."""


@preprocess
def endless() -> Iterator[int]:
    return itertools.count()


@depends(endless)
@parallel.map(chunk_by=CHUNK)
def cubed(x: int) -> int:
    return x**3


@depends(cubed)
@parallel.filter
def even(x: int) -> bool:
    return x % 2 == 0


@depends(even)
@postprocess(stream=True)
def first_hundred(values: Iterable[int]) -> list[int]:
    return list(itertools.islice(values, 100))


@depends(cubed)
@postprocess(stream=True)
def first_three(values: Iterable[int]) -> list[int]:
    iterator = iter(values)
    return [next(iterator), next(iterator), next(iterator)]


@pytest.mark.parametrize("inline", [True, False])
def test_endless_source_with_a_stream_that_stops(
    engine: str, inline: bool, child_pids: Callable[[], list[int]]
) -> None:
    listener = RecordingListener()
    result = madhatter.run(
        first_hundred, engine=engine, workers=WORKERS, inline=inline, listeners=[listener]
    )
    assert result == [x**3 for x in range(0, 200, 2)]
    finished = listener.of_type(RunFinished)
    assert [e.status for e in finished] == ["succeeded"]  # type: ignore[attr-defined]
    assert listener.types()[-1] == "RunFinished"
    assert child_pids() == []


def test_a_stream_that_stops_after_the_first_items(engine: str) -> None:
    assert madhatter.run(first_three, engine=engine, workers=WORKERS, inline=False) == [0, 1, 8]


@preprocess
def finite() -> Iterator[int]:
    yield from range(2345)


@depends(finite)
@parallel.map(chunk_by=7)
def plus_one(x: int) -> int:
    return x + 1


@depends(plus_one)
@postprocess(stream=True)
def running_total(values: Iterable[int]) -> tuple[int, int, bool]:
    count = total = 0
    ordered, last = True, 0
    for value in values:
        ordered = ordered and value == last + 1
        last = value
        count += 1
        total += value
    return count, total, ordered


def test_a_stream_sees_every_item_in_order(engine: str) -> None:
    result = madhatter.run(running_total, engine=engine, workers=WORKERS, inline=False)
    assert result == (2345, sum(range(1, 2346)), True)


def test_a_stream_consumer_gets_an_iterator_not_a_list(engine: str) -> None:
    kinds: list[str] = []

    @depends(plus_one)
    @postprocess(stream=True)
    def inspect_input(values: Any) -> int:
        kinds.append(type(values).__name__)
        assert not isinstance(values, list)
        return sum(1 for _ in values)

    assert madhatter.run(inspect_input, engine=engine, workers=WORKERS) == 2345
    assert len(kinds) == 1


# -- back-pressure -----------------------------------------------------------------------------


class Counted:
    """A source that counts the items pulled from it, and a consumer that checks the lead."""

    def __init__(self) -> None:
        self.pulled = 0
        self.leads: list[int] = []

    def source(self) -> Iterator[int]:
        for item in itertools.count():
            self.pulled += 1
            yield item

    def consume(self, values: Iterable[int]) -> list[int]:
        taken = []
        for value in values:
            taken.append(value)
            self.leads.append(self.pulled - len(taken))
            if len(taken) == TAKEN:
                break
        return taken


@pytest.mark.parametrize("inline", [True, False])
def test_back_pressure_bounds_how_far_the_source_runs_ahead(engine: str, inline: bool) -> None:
    counted = Counted()

    def pull() -> Iterator[int]:
        return counted.source()

    def consume(values: Iterable[int]) -> list[int]:
        return counted.consume(values)

    source = preprocess(name="counted_source")(pull)

    def triple(x: int) -> int:
        return 3 * x

    def keep(x: int) -> bool:
        return x % 5 != 0

    mapped = depends(source)(parallel.map(chunk_by=CHUNK, name="triple")(triple))
    kept = depends(mapped)(parallel.filter(name="keep", chunk_by=CHUNK)(keep))
    consumer = depends(kept)(postprocess(stream=True, name="consume")(consume))

    for fuse in (True, False):
        counted.pulled, counted.leads = 0, []
        report = Pipeline([consumer]).execute(engine=engine, workers=WORKERS, inline=inline, fuse=fuse)
        expected = [3 * x for x in range(TAKEN * 2) if (3 * x) % 5 != 0][:TAKEN]
        assert report.result == expected
        # Every fifth item is filtered out: the consumer's k items need about 5k/4 pulled.
        bound = SLACK_CHUNKS * CHUNK * (2 if not fuse else 1)
        worst = max(lead - taken // 4 for taken, lead in enumerate(counted.leads, 1))
        assert worst <= bound, f"the source ran {worst} items ahead (fuse={fuse})"
        assert counted.pulled < TAKEN * 5 // 4 + bound + CHUNK
