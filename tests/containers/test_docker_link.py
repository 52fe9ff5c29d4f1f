"""With a local daemon, tasks reach a container over a bind-mounted Unix socket and large buffers
travel as shared-memory files, both ways; ``share_memory=False`` keeps the daemon's stream."""

from __future__ import annotations

import glob
import os
import pickle
import tempfile
from typing import Any

import numpy as np
import pytest

from madhatter.engines import Task, get_engine

MB = 1 << 20


def shared_mappings(buffer: Any) -> tuple[int, bool]:
    """In the container: the payload's size, and whether madhatter's shared file is mapped here
    while the task holds it (the standard library is all the test image has)."""
    with open("/proc/self/maps") as maps:
        mapped = any("/memfd:madhatter" in line for line in maps)
    return memoryview(buffer).nbytes, mapped


def echo(argument: Any) -> Any:
    return argument


def echo_buffer(buffer: Any) -> pickle.PickleBuffer:
    """Sends the payload back as a buffer, which may travel beside the message."""
    return pickle.PickleBuffer(buffer)


def address(view: memoryview) -> int:
    return int(np.frombuffer(view, dtype=np.uint8).__array_interface__["data"][0])


def in_shared_file(addr: int) -> bool:
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            low, high = (int(bound, 16) for bound in fields[0].split("-"))
            if low <= addr < high:
                return len(fields) > 5 and fields[5].startswith("/memfd:madhatter")
    return False


@pytest.mark.parametrize("share_memory", [True, False], ids=["linked", "attach-stream"])
def test_a_large_buffer_crosses_the_container_channel_both_ways(
    share_memory: bool, image: str, madhatter_containers: Any
) -> None:
    data = bytearray(range(256)) * (16 * MB // 256)
    payload = pickle.PickleBuffer(data)  # arrives as a view of the shared pages when linked
    with get_engine("docker", workers=1, image=image, share_memory=share_memory) as engine:
        engine.prepare({})
        task = Task("a", shared_mappings, "seen", payload)
        size, mapped = engine.submit(task).result(timeout=120).value
        back = engine.submit(Task("b", echo_buffer, "echo", payload)).result(timeout=120).value
    assert size == 16 * MB
    assert mapped is share_memory
    assert bytes(back) == bytes(data)
    if share_memory:
        assert in_shared_file(address(back))


def test_the_link_directory_goes_with_the_engine(image: str, madhatter_containers: Any) -> None:
    pattern = os.path.join(tempfile.gettempdir(), "madhatter-docker-*")
    before = set(glob.glob(pattern))
    with get_engine("docker", workers=1, image=image) as engine:
        engine.prepare({})
        assert engine.submit(Task("a", echo, "echo", 41)).result(timeout=120).value == 41
        made = set(glob.glob(pattern)) - before
        assert len(made) == 1
        (link_dir,) = made
        assert os.stat(link_dir).st_mode & 0o777 == 0o711  # enterable, not listable
    assert set(glob.glob(pattern)) == before
