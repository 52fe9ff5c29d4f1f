"""The shipped conformance suite on the cluster engines, plus the repository's examples.

Each engine runs against a real cluster of ``conftest.py``, connected to by address, one cluster
serving every run of the module: a Dask scheduler and two workers (each its own process), and a
Ray head node of two CPUs (its own process group). Each run's engine connects to its cluster and
disconnects at the end of the run.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
from typing import Any

import pytest

from madhatter import Pipeline
from madhatter.testing import EngineConformance

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


class ClusterConformance(EngineConformance):
    """The suite, and the examples (in the repository, not shipped with the suite), run in this
    process and by the CLI."""

    @pytest.mark.parametrize(
        ("example", "params"),
        [("hello", {}), ("words", {"files": 40}), ("primes", {"limit": 1_000_000, "block": 50_000})],
    )
    def test_examples_match_the_serial_engine(self, example: str, params: dict[str, Any]) -> None:
        pipeline = Pipeline.from_module(str(EXAMPLES / f"{example}.py"))
        self.run_matches_serial(pipeline, params=params)

    def test_the_cli_runs_an_example_on_the_cluster(self, engine_options: dict[str, Any]) -> None:
        done = subprocess.run(
            [
                sys.executable, "-m", "madhatter", "run", str(EXAMPLES / "hello.py"),
                "--engine", self.engine, "--address", engine_options["address"],
                "--no-inline", "--quiet",
            ],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "[1, 2, 3, 4]"


class TestDask(ClusterConformance):
    engine = "dask"

    @pytest.fixture
    def engine_options(self, dask_cluster: Any) -> dict[str, Any]:
        return {"address": dask_cluster.address}


class TestRay(ClusterConformance):
    engine = "ray"

    @pytest.fixture
    def engine_options(self, ray_cluster: Any) -> dict[str, Any]:
        return {"address": ray_cluster.address}
