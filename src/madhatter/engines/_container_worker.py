"""The loop a container runs: tasks in on stdin, results out on stdout (the ``docker`` engine).

This module runs *inside* the container, from the runtime bundle the engine sends on start-up
(see ``_bundle.py``), so it needs nothing but the standard library and cloudpickle. Messages are
length-prefixed (:func:`frame`). Standard output is reserved for them: file descriptor 1 is
pointed at standard error before any task runs, so a step's ``print`` lands in the container's
log instead of corrupting the channel.

When the daemon runs on the driver's machine, the engine bind-mounts a Unix socket and names it
in ``MADHATTER_LINK``: tasks then come over that socket (``_link.py``), which bypasses the
daemon's stream relay and carries large buffers as shared-memory files, as for local worker
processes.

The container needs no signal handling of its own: the engine stops it through Docker, and when
the driver goes away the container's standard input closes (Docker's "stdin once"), which ends
the loop and the container.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from typing import BinaryIO

from . import _shared_memory as shared_memory
from ._link import Link
from ._worker import serve

HEADER = struct.Struct(">Q")
"""The length prefix of every message (the bootstrap in ``_bundle.py`` reads one by hand)."""


def frame(payload: bytes) -> bytes:
    """``payload`` with its length in front, as it travels on the container's stdin and stdout."""
    return HEADER.pack(len(payload)) + payload


def read_frame(stream: BinaryIO) -> bytes:
    """The next framed message on ``stream``; ``EOFError`` at its end."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        raise EOFError("the channel closed")
    (size,) = HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError("the channel closed mid-message")
    return payload


LINK_ENVIRONMENT = "MADHATTER_LINK"
"""Names the Unix socket to serve tasks on instead of stdin and stdout (see ``_container.py``)."""


def main() -> None:
    """Serve tasks until told to stop or the driver goes away."""
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # from now on, anything printed goes to stderr, never into the channel
    link_path = os.environ.get(LINK_ENVIRONMENT)
    if link_path:  # the driver's socket, bind-mounted: it carries shared-memory files too
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(link_path)
        link = Link(connection)
        serve(link.receive, link.send, shared=shared_memory.AVAILABLE)
        return
    requests = sys.stdin.buffer

    def send(message: bytes) -> None:
        channel.write(frame(message))
        channel.flush()

    # The channel cannot carry descriptors: every value travels in the pickle stream.
    serve(lambda: (read_frame(requests), []), lambda message, _fds: send(message), shared=False)
