"""The chunk cache across engines: a run on the processes engine fills it, the same pipeline on a
real Dask cluster, a real Ray cluster and the serial engine finds everything; a run on a cluster
fills it from its workers (they write to the shared folder) for a local run to find."""

from __future__ import annotations

import collections
import pathlib
from typing import Any

import pytest

from madhatter import Pipeline

PIPELINE = """
from madhatter import depends, parallel, preprocess

LOG = LOG_PATH


def note(step, x):
    with open(LOG, "a") as log:
        log.write(f"{step} {x}\\n")


@preprocess
def numbers():
    return list(range(120))


@depends(numbers)
@parallel.map(chunk_by=CHUNK_BY)
def double(x):
    note("double", x)
    return x * 2


@depends(double)
@parallel.filter(chunk_by=CHUNK_BY)
def keep_most(x):
    note("keep_most", x)
    return x % 3 != 0
"""
EXPECTED = [x * 2 for x in range(120) if (x * 2) % 3 != 0]


class Pipelines:
    def __init__(self, folder: pathlib.Path) -> None:
        self.folder, self.log, self.cache = folder, folder / "log", folder / "cache"
        self.log.write_text("")

    def load(self, chunk_by: int) -> Pipeline:
        """The pipeline with ``chunk_by``, its file rewritten and loaded afresh (a chunk size is
        not a code change: the decorators' options do not count)."""
        path = self.folder / "cached_steps.py"
        text = PIPELINE.replace("LOG_PATH", repr(str(self.log))).replace("CHUNK_BY", str(chunk_by))
        path.write_text(text)
        return Pipeline.from_module(str(path))

    def run(self, pipeline: Pipeline, **options: Any) -> collections.Counter[str]:
        """Run, check the result, and return how many items each step really computed."""
        self.log.write_text("")
        assert pipeline.run(cache=str(self.cache), inline=False, **options) == EXPECTED
        return collections.Counter(line.split()[0] for line in self.log.read_text().splitlines())


def test_a_processes_run_is_found_on_dask_ray_and_serial(
    tmp_path: pathlib.Path, dask_cluster: Any, ray_cluster: Any
) -> None:
    pipelines = Pipelines(tmp_path)
    assert pipelines.run(pipelines.load(10), engine="processes", workers=2) == {
        "double": 120,
        "keep_most": 120,
    }
    assert pipelines.run(pipelines.load(7), engine="dask", address=dask_cluster.address) == {}
    assert pipelines.run(pipelines.load(13), engine="ray", address=ray_cluster.address) == {}
    assert pipelines.run(pipelines.load(4), engine="serial") == {}


@pytest.mark.parametrize("engine", ["dask", "ray"])
def test_cluster_workers_fill_the_cache_for_a_local_run(
    tmp_path: pathlib.Path, engine: str, request: pytest.FixtureRequest
) -> None:
    cluster = request.getfixturevalue(f"{engine}_cluster")
    pipelines = Pipelines(tmp_path)
    computed = pipelines.run(pipelines.load(10), engine=engine, address=cluster.address)
    assert computed == {"double": 120, "keep_most": 120}
    assert pipelines.run(pipelines.load(9), engine="threads") == {}
