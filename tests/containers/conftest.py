"""A real Docker daemon and a real image for the docker engine's tests.

``.ci/docker-up`` starts the daemon (no bridge, no iptables) and builds the image
``madhatter-test/python:3.11`` (Debian bookworm, minbase + python3, by debootstrap and
``docker import``). Without the ``docker`` extra, a daemon or the image the tests skip, saying
which; under ``MADHATTER_REQUIRE_ALL=1`` (CI) a skip is a failure.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import pathlib
import tarfile
from collections.abc import Iterable, Iterator
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


OTEL_DISTRIBUTIONS = ("opentelemetry-sdk",)
"""What a traced container needs (with its requirements), copied from this environment."""


@pytest.fixture(scope="session")
def otel_image(docker_client: Any, image: str) -> str:
    """The test image with OpenTelemetry's API and SDK, as a user's image with
    ``madhatter[otel]`` has them: built offline, from the distributions installed here (the
    container's Python is this one's major.minor, and they are pure Python)."""
    pytest.importorskip("opentelemetry.sdk", reason="the otel image copies this environment's SDK")
    name = "madhatter-test/python-otel:3.11"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        dockerfile = f"FROM {image}\nCOPY site/ /usr/lib/python3/dist-packages/\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        for distribution in _with_requirements(OTEL_DISTRIBUTIONS):
            for file in distribution.files or ():
                source = pathlib.Path(str(distribution.locate_file(file)))
                if source.is_file() and not {"__pycache__", ".."} & set(file.parts):
                    tar.add(source, arcname=f"site/{file}")
    context.seek(0)
    docker_client.images.build(
        fileobj=context, custom_context=True, tag=name, network_mode="none", rm=True
    )
    return name


def _with_requirements(names: Iterable[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions ``names`` and, transitively, those they require here."""
    from packaging.requirements import Requirement

    found: dict[str, importlib.metadata.Distribution] = {}
    waiting = list(names)
    while waiting:
        name = waiting.pop()
        distribution = importlib.metadata.distribution(name)
        key = distribution.metadata["Name"].lower().replace("_", "-")
        if key in found:
            continue
        found[key] = distribution
        for text in distribution.requires or ():
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                waiting.append(requirement.name)
    return list(found.values())


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
