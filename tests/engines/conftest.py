"""The cluster tests' real Dask cluster, and the container tests' Docker daemon and image, for
engine tests that also run on those (test_live_output.py)."""

from __future__ import annotations

import pathlib
import sys

TESTS = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS), str(TESTS / "cluster")]  # cluster_helpers lives in tests/cluster
from cluster.conftest import dask_cluster  # noqa: E402, F401
from containers.conftest import docker_client, image, madhatter_containers  # noqa: E402, F401
