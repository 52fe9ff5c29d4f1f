"""What a step prints in a container reaches the driver as ``ChunkOutput`` (over the link socket
or the attach stream alike), without disturbing the channel the results travel on."""

from __future__ import annotations

from typing import Any

import pytest

from madhatter import Pipeline, depends, parallel, preprocess
from madhatter.events import ChunkOutput
from madhatter.testing import RecordingListener

IMAGE = "madhatter-test/python:3.11"


@preprocess
def words() -> list[str]:
    return ["red", "green", "blue", "gold"]


@depends(words)
@parallel.map(chunk_by=2, image=IMAGE)
def loud(word: str) -> str:
    print(f"in a container: {word}")
    return word.upper()


@pytest.mark.parametrize("share_memory", [True, False])
def test_container_steps_send_back_what_they_print(
    image: str, madhatter_containers: Any, share_memory: bool
) -> None:
    listener = RecordingListener()
    report = Pipeline([words, loud]).execute(
        engine="docker", capture_output=True, listeners=[listener], share_memory=share_memory
    )
    assert report.result == ["RED", "GREEN", "BLUE", "GOLD"]
    text = "".join(event.text for event in listener.of_type(ChunkOutput))
    for word in ("red", "green", "blue", "gold"):
        assert f"in a container: {word}\n" in text
