"""The cache's keys are right in both directions: an edit recomputes exactly the steps it
touches and everything after them, and an edit that changes nothing recomputes nothing.

Each test runs the real CLI twice on one cache, editing the pipeline file in between, and counts
what each step really computed (its side-effect log) and what it found (the run's events).
"""

from __future__ import annotations

import pathlib

from cache_helpers import PIPELINE, Runs, expected, write_pipeline

ITEMS = 200


def test_a_first_run_computes_everything_and_a_second_finds_everything(tmp_path: pathlib.Path) -> None:
    runs, pipeline = Runs(tmp_path), write_pipeline(tmp_path)
    first = runs.run(pipeline)
    assert first.result == expected()
    assert first.computed == {"a": ITEMS, "b": ITEMS, "c": ITEMS}
    assert sum(first.cached.values()) == 0
    second = runs.run(pipeline)
    assert second.result == expected()
    assert second.computed == {}, second
    assert second.cached == {"a": ITEMS, "b": ITEMS, "c": ITEMS}


def test_editing_a_helper_recomputes_its_step_and_the_ones_after(tmp_path: pathlib.Path) -> None:
    runs, pipeline = Runs(tmp_path), write_pipeline(tmp_path)
    runs.run(pipeline)
    write_pipeline(tmp_path, text=PIPELINE.replace("return x + 1", "return x + 2"))
    edited = runs.run(pipeline)
    assert edited.result == [(x * 2 + 2) * 3 for x in range(ITEMS)]
    assert edited.computed == {"b": ITEMS, "c": ITEMS}, edited  # step_a is found, not rerun
    assert edited.cached["a"] == ITEMS


def test_editing_docstrings_comments_and_layout_recomputes_nothing(tmp_path: pathlib.Path) -> None:
    runs, pipeline = Runs(tmp_path), write_pipeline(tmp_path)
    runs.run(pipeline)
    cosmetic = (
        PIPELINE.replace('"""Add one."""', '"""Add one to x (a better docstring)."""')
        .replace("    return x * 2\n", "    # double it\n    return (x *\n            2)\n")
        .replace('note("c", x)', "note( 'c' , x )  # a comment")
    )
    write_pipeline(tmp_path, text=cosmetic)
    again = runs.run(pipeline)
    assert again.result == expected()
    assert again.computed == {}, again


def test_a_parameter_only_the_last_step_reads_recomputes_only_that_step(tmp_path: pathlib.Path) -> None:
    runs, pipeline = Runs(tmp_path), write_pipeline(tmp_path)
    runs.run(pipeline)
    changed = runs.run(pipeline, "--param", "scale=5")
    assert changed.result == expected(scale=5)
    assert changed.computed == {"c": ITEMS}, changed


def test_other_chunk_sizes_workers_and_engines_still_find_everything(tmp_path: pathlib.Path) -> None:
    runs, pipeline = Runs(tmp_path), write_pipeline(tmp_path, chunk_by=10)
    runs.run(pipeline, "--engine", "processes", "--workers", "2")
    write_pipeline(tmp_path, chunk_by=7)  # a chunk_by edit is not a code edit
    for options in (
        ["--engine", "processes", "--workers", "1"],
        ["--engine", "serial"],
        ["--engine", "threads"],
    ):
        again = runs.run(pipeline, *options)
        assert again.result == expected()
        assert again.computed == {}, (options, again)
    write_pipeline(tmp_path, chunk_by=None)  # sized automatically
    assert runs.run(pipeline).computed == {}


def test_new_items_are_computed_and_known_ones_found(tmp_path: pathlib.Path) -> None:
    runs, pipeline = Runs(tmp_path), write_pipeline(tmp_path, chunk_by=16)
    runs.run(pipeline, items=100)
    more = runs.run(pipeline, items=150)
    assert more.result == expected(150)
    assert more.computed == {"a": 50, "b": 50, "c": 50}, more


WHOLE_CHUNKS = PIPELINE.replace(
    """@depends(step_b)
@parallel.map(chunk_by=CHUNK_BY)
def step_c(x, scale=3):
    note("c", x)
    return x * scale""",
    """@depends(step_b)
@parallel(chunk_by=CHUNK_BY)
def step_c(chunk, scale=3):
    for x in chunk:
        note("c", x)
    return [x * scale for x in chunk]""",
)


def test_a_whole_chunk_step_is_found_again_though_chunk_sizes_change(tmp_path: pathlib.Path) -> None:
    # step_c takes whole chunks: its results are filed per chunk, so a rerun cuts its chunks
    # where the first run did, whatever sizes it would have chosen itself.
    runs, pipeline = Runs(tmp_path), write_pipeline(tmp_path, chunk_by=None, text=WHOLE_CHUNKS)
    first = runs.run(pipeline, "--engine", "processes", "--workers", "2")
    assert first.result == expected()
    write_pipeline(tmp_path, chunk_by=7, text=WHOLE_CHUNKS)
    for options in (["--engine", "threads"], ["--engine", "processes", "--workers", "1"]):
        again = runs.run(pipeline, *options)
        assert again.result == expected()
        assert again.computed == {}, (options, again)
    more = runs.run(pipeline, items=260)  # new items at the end: only their chunks run
    assert more.result == expected(260)
    assert more.computed["c"] <= 60 + 7, more
    assert more.computed["a"] == 60, more
