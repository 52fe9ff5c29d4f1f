"""A per-item step's error names the item that raised, not only its chunk (issue 11): its
position in the chunk and a short repr, for map and filter steps and for map steps fused into
one pass, in the driver and in workers alike."""

from __future__ import annotations

import pytest

import madhatter
from madhatter import Pipeline, StepFailed, depends, parallel, preprocess


@preprocess
def rows() -> list[dict[str, object]]:
    return [{"id": i, "price": "n/a" if i == 13 else str(i)} for i in range(40)]


@depends(rows)
@parallel.map(chunk_by=10)
def price(row: dict[str, object]) -> float:
    return float(str(row["price"]))


@depends(rows)
@parallel.filter(chunk_by=10)
def affordable(row: dict[str, object]) -> bool:
    return float(str(row["price"])) < 100


@depends(rows)
@parallel.map(chunk_by=10)
def identity(row: dict[str, object]) -> dict[str, object]:
    return row


@depends(identity)
@parallel.map(chunk_by=10)
def second(row: dict[str, object]) -> float:
    return float(str(row["price"]))


@pytest.mark.parametrize("engine", ["serial", "processes"])
@pytest.mark.parametrize(
    ("pipeline", "step"),
    [
        (Pipeline([rows, price]), "price"),
        (Pipeline([rows, affordable]), "affordable"),
        (Pipeline([rows, identity, second]), "second"),  # fused with identity: one pass
    ],
    ids=["map", "filter", "fused"],
)
def test_the_error_names_the_failing_item(pipeline: Pipeline, step: str, engine: str) -> None:
    with pytest.raises(StepFailed) as caught:
        madhatter.run(pipeline, engine=engine, inline=False)
    error = caught.value
    assert (error.step, error.chunk, error.item) == (step, 1, 3)  # item 13 is 3rd of chunk 1
    assert error.item_preview == "{'id': 13, 'price': 'n/a'}"
    assert "failed on chunk 1 (input [{'id': 10" in str(error)
    assert str(error).splitlines()[0].endswith(", at item 3: {'id': 13, 'price': 'n/a'}")
    assert type(error.__cause__) is ValueError
    assert "could not convert string to float: 'n/a'" in error.remote_traceback


@depends(rows)
@parallel(chunk_by=10)
def whole_chunk(chunk: list[dict[str, object]]) -> list[float]:
    return [float(str(row["price"])) for row in chunk]


def test_a_whole_chunk_step_names_the_chunk_only() -> None:
    with pytest.raises(StepFailed) as caught:
        madhatter.run(Pipeline([rows, whole_chunk]), engine="serial")
    assert (caught.value.chunk, caught.value.item, caught.value.item_preview) == (1, None, None)
