"""Fixtures of the chaos tests: the seed (printed, settable), a check that nothing is left in
/dev/shm, and a Dask cluster with nannies for one test (its workers get killed)."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator

import pytest
from chaos_helpers import SEED_VARIABLE, NannyDaskCluster, chaos_seed, shm_entries


@pytest.fixture
def seed() -> int:
    """The case's seed, printed so that a failure can be replayed with ``MADHATTER_CHAOS_SEED``."""
    value = chaos_seed()
    print(f"chaos seed: {value} (replay: {SEED_VARIABLE}={value} python -m pytest tests/chaos)")
    return value


@pytest.fixture(autouse=True)
def nothing_left_in_dev_shm(wait_until: Callable[..., bool]) -> Iterator[None]:
    """Nothing appears in /dev/shm that was not there before the case (given a few seconds)."""
    before = shm_entries()
    yield
    assert wait_until(lambda: not shm_entries() - before, timeout=10), sorted(shm_entries() - before)


@pytest.fixture
def nanny_dask_cluster(tmp_path: pathlib.Path) -> Iterator[NannyDaskCluster]:
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    from distributed import Client

    cluster = NannyDaskCluster(tmp_path)
    try:
        with Client(cluster.address, set_as_default=False, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield cluster
    finally:
        cluster.stop()
