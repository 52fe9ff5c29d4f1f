"""The cache survives concurrency and damage: two runs writing one cache at once corrupt
nothing, and a damaged entry is reported, ignored and recomputed, never a crash or a wrong result."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

from cache_helpers import Runs, expected, write_pipeline

from process_helpers import MADHATTER

ITEMS = 600


def test_two_runs_at_once_on_one_cache_corrupt_nothing(tmp_path: pathlib.Path) -> None:
    runs, pipeline = Runs(tmp_path), write_pipeline(tmp_path, chunk_by=5)
    command = [str(MADHATTER), "run", str(pipeline), "--cache", str(runs.cache), "--quiet", "--json"]
    logs = [tmp_path / "log-1", tmp_path / "log-2"]
    both = [
        subprocess.Popen(
            [*command, "--engine", engine],
            env={**os.environ, "MH_LOG": str(log), "MH_ITEMS": str(ITEMS)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for log, engine in zip(logs, ("processes", "threads"), strict=True)
    ]
    for run in both:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        assert "Warning" not in err, err  # no entry was ever seen half written
        assert json.loads(out) == expected(ITEMS)
    after = runs.run(pipeline, items=ITEMS)
    assert after.result == expected(ITEMS)
    assert after.computed == {}, after  # between them, the two runs filed every item
    assert "Warning" not in after.done.stderr


def test_a_damaged_entry_is_reported_and_recomputed(tmp_path: pathlib.Path) -> None:
    runs, pipeline = Runs(tmp_path), write_pipeline(tmp_path, chunk_by=10)
    runs.run(pipeline)
    entries = sorted(runs.cache.rglob("*.mhc"))
    step_c = [entry for entry in entries if "step_c" in entry.parts]
    truncated, flipped = step_c[0], step_c[1]
    truncated.write_bytes(truncated.read_bytes()[:-20])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    again = runs.run(pipeline)
    assert again.result == expected()
    assert again.computed == {"c": 20}, again  # the two damaged chunks of step_c, 10 items each
    assert again.done.stderr.count("CacheCorruptionWarning") == 2, again.done.stderr
    assert runs.run(pipeline).computed == {}  # recomputed and filed again
