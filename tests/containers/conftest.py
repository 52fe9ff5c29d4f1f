"""A real Docker daemon and a real image for the docker engine's tests.

``.ci/docker-up`` starts the daemon (no bridge, no iptables) and builds the image
``madhatter-test/python:3.11`` (Debian bookworm, minbase + python3, by debootstrap and
``docker import``). Without the ``docker`` extra, a daemon or the image the tests skip, saying
which; under ``MADHATTER_REQUIRE_ALL=1`` (CI) a skip is a failure.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

import pytest

IMAGE = os.environ.get("MADHATTER_TEST_IMAGE", "madhatter-test/python:3.11")
LABEL_FILTER = {"label": "io.madhatter.engine=docker"}


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    docker = pytest.importorskip("docker", reason="the docker extra is not installed")
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"no Docker daemon answers ({exc}); run .ci/docker-up")
    yield client
    client.close()


@pytest.fixture(scope="session")
def image(docker_client: Any) -> str:
    import docker

    try:
        docker_client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"the test image {IMAGE} is missing; run .ci/docker-up to build it")
    return IMAGE


@pytest.fixture(scope="session")
def wrong_python_image(docker_client: Any, image: str) -> str:
    """An image whose ``python3`` says it is Python 3.9: built from the test image, offline."""
    name = "madhatter-test/wrong-python:latest"
    dockerfile = (
        f"FROM {image}\n"
        "RUN printf '#!/bin/sh\\necho 3.9\\n' > /usr/local/bin/python3 && "
        "chmod +x /usr/local/bin/python3\n"
    )
    docker_client.images.build(
        fileobj=io.BytesIO(dockerfile.encode()), tag=name, network_mode="none", rm=True
    )
    return name


@pytest.fixture
def madhatter_containers(docker_client: Any) -> Iterator[Any]:
    """A function listing madhatter's containers (running or not, as the daemon's listing
    dicts: ``Id``, ``State``, ...); the test must leave none behind."""

    def listing() -> list[dict[str, Any]]:
        # the low-level listing: one request, no inspection of containers that may be gone
        return list(docker_client.api.containers(all=True, filters=LABEL_FILTER))

    assert listing() == [], "containers left over from before this test"
    yield listing
    leftovers = listing()
    for container in leftovers:
        docker_client.api.remove_container(container["Id"], force=True)
    assert leftovers == [], f"the test left containers behind: {leftovers}"
