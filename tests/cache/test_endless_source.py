"""The cache with an endless source and a streaming consumer: back-pressure keeps the run bounded,
what was computed is filed, and a second run finds it."""

from __future__ import annotations

import collections
import itertools
import pathlib
from collections.abc import Iterator

from madhatter import Pipeline, depends, parallel, postprocess, preprocess

CALLS: collections.Counter[int] = collections.Counter()


@preprocess
def endless() -> Iterator[int]:
    return itertools.count()


@depends(endless)
@parallel.map(chunk_by=10)
def square(x: int) -> int:
    CALLS[x] += 1
    return x * x


@depends(square)
@postprocess(stream=True)
def first_hundred(values: Iterator[int]) -> list[int]:
    return list(itertools.islice(values, 100))


def test_an_endless_source_is_cached_as_far_as_it_was_read(tmp_path: pathlib.Path) -> None:
    pipeline = Pipeline([endless, square, first_hundred])
    cache = str(tmp_path / "cache")
    first = pipeline.execute(engine="threads", workers=2, cache=cache)
    assert first.result == [x * x for x in range(100)]
    computed = sum(CALLS.values())
    assert 100 <= computed < 1000  # back-pressure: the source was read a bounded way ahead
    CALLS.clear()
    second = pipeline.execute(engine="threads", workers=2, cache=cache)
    assert second.result == first.result
    assert not any(CALLS[x] for x in range(100)), "the first hundred were found, not recomputed"
    assert second.steps["square"].cached >= 100
