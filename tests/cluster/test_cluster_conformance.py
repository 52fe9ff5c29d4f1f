"""The shipped conformance suite on the cluster engines, plus the repository's examples.

One cluster per engine serves every run of the module: the Dask cluster of ``conftest.py``
(a scheduler and two workers, each its own process), and a local Ray of two CPUs started once
the way the ray engine starts one; each run's engine then uses that Ray and leaves it running.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from madhatter import Pipeline
from madhatter.testing import EngineConformance

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


class ClusterConformance(EngineConformance):
    """The suite, and the examples (in the repository, not shipped with the suite)."""

    @pytest.mark.parametrize(
        ("example", "params"),
        [("hello", {}), ("words", {"files": 40}), ("primes", {"limit": 1_000_000, "block": 50_000})],
    )
    def test_examples_match_the_serial_engine(self, example: str, params: dict[str, Any]) -> None:
        pipeline = Pipeline.from_module(str(EXAMPLES / f"{example}.py"))
        self.run_matches_serial(pipeline, params=params)


class TestDask(ClusterConformance):
    engine = "dask"

    @pytest.fixture
    def engine_options(self, dask_cluster: Any) -> dict[str, Any]:
        return {"address": dask_cluster.address}


@pytest.fixture(scope="class")
def local_ray() -> Iterator[None]:
    """A Ray for the class, started by the engine; the runs' engines find it initialised."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    from madhatter.engines.ray import RayEngine

    starter = RayEngine(workers=2, log_to_driver=False)
    try:
        yield
    finally:
        starter.shutdown(cancel_pending=True)


@pytest.mark.usefixtures("local_ray")
class TestRay(ClusterConformance):
    engine = "ray"
