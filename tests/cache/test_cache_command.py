"""``madhatter cache ls|explain|clear`` on a real cache, through the real command."""

from __future__ import annotations

import os
import pathlib
import subprocess

from cache_helpers import PIPELINE, Runs, write_pipeline

from process_helpers import MADHATTER


def cache_command(runs: Runs, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(MADHATTER), "cache", *args, "--cache", str(runs.cache)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MH_LOG": str(runs.log)},
    )
    assert done.returncode == 0, done.stderr
    return done


def test_ls_lists_each_step_with_its_items(tmp_path: pathlib.Path) -> None:
    runs, pipeline = Runs(tmp_path), write_pipeline(tmp_path, chunk_by=50)
    assert "is empty" in cache_command(runs, "ls").stdout
    runs.run(pipeline)
    rows = {line.split()[0]: line.split() for line in cache_command(runs, "ls").stdout.splitlines()[1:]}
    assert set(rows) == {"step_a", "step_b", "step_c"}
    assert all(row[2] == "200" and row[3] == "4" for row in rows.values())  # items, entries


def test_explain_names_the_helper_the_parameter_or_the_upstream_step(tmp_path: pathlib.Path) -> None:
    runs, pipeline = Runs(tmp_path), write_pipeline(tmp_path)
    runs.run(pipeline)
    unchanged = cache_command(runs, "explain", str(pipeline), "step_c").stdout
    assert "unchanged" in unchanged
    assert "new inputs" in unchanged
    assert (
        "parameter scale changed"
        in cache_command(runs, "explain", str(pipeline), "step_c", "--param", "scale=4").stdout
    )
    write_pipeline(tmp_path, text=PIPELINE.replace("return x + 1", "return x + 2"))
    assert (
        "helper three_steps.bump changed"
        in cache_command(runs, "explain", str(pipeline), "step_b").stdout
    )
    downstream = cache_command(runs, "explain", str(pipeline), "step_c").stdout
    assert "earlier steps changed ('step_b')" in downstream


def test_clear_keeps_what_is_younger_and_removes_the_rest(tmp_path: pathlib.Path) -> None:
    runs, pipeline = Runs(tmp_path), write_pipeline(tmp_path, chunk_by=100)
    runs.run(pipeline)
    assert "removed 0 cache entries" in cache_command(runs, "clear", "--older-than", "1d").stdout
    assert "removed 2 cache entries" in cache_command(runs, "clear", "--step", "step_c").stdout
    again = runs.run(pipeline)
    assert again.computed == {"c": 200}, again  # only the cleared step runs again
    assert "removed 6 cache entries" in cache_command(runs, "clear").stdout
    assert "is empty" in cache_command(runs, "ls").stdout
