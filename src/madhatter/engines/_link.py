"""The channel between the processes engine and one of its workers: a Unix socket pair that
carries messages and, next to them, open file descriptors.

A message is a byte string; the descriptors sent with it (the shared-memory files of
``_shared_memory.py``) ride on its header as ``SCM_RIGHTS`` ancillary data, so they arrive with
the message they belong to or not at all. A descriptor in flight belongs to the kernel: if either
end dies, the kernel closes it, so nothing sent this way can leak.

Each message is a header (payload length, descriptor count) followed by the payload. The sender
writes the header with one ``sendmsg`` and the payload with ``sendall``; the receiver reads the
header with ``recvmsg`` (the descriptors come with its first byte) and the payload into a
preallocated buffer.
"""

from __future__ import annotations

import array
import os
import select
import socket
import struct
from collections.abc import Sequence

HEADER = struct.Struct("=QI")
"""Payload length in bytes and the number of descriptors that came with the message."""

SMALL_MESSAGE_BYTES = 64 * 1024
"""Up to this size, header and payload are joined and sent with one call (the copy costs less)."""

MAX_FDS = 16
"""At most this many descriptors travel with one message (a task needs two: function, argument)."""


class Link:
    """One end of a worker's socket: :meth:`send` and :meth:`receive` whole messages, each with
    the descriptors that belong to it. Usable in ``multiprocessing.connection.wait`` (it has a
    ``fileno``). Not thread-safe: one thread sends, one receives."""

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock

    @classmethod
    def pair(cls) -> tuple[Link, Link]:
        """Two connected ends: the driver keeps one, the worker process gets the other."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls(ours), cls(theirs)

    def fileno(self) -> int:
        return self._socket.fileno()

    def close(self) -> None:
        self._socket.close()

    def send(self, payload: bytes, fds: Sequence[int] = ()) -> None:
        """Send ``payload`` with duplicates of ``fds`` (the caller keeps and closes its own).
        Raises ``OSError`` (``BrokenPipeError``) if the other end is gone."""
        header = HEADER.pack(len(payload), len(fds))
        if not fds and len(payload) <= SMALL_MESSAGE_BYTES:
            self._socket.sendall(header + payload)  # one system call: most messages are small
            return
        if fds:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
            sent = self._socket.sendmsg([header], ancillary)
            if sent < len(header):  # the descriptors went with the first bytes; finish the rest
                self._socket.sendall(header[sent:])
        else:
            self._socket.sendall(header)
        if payload:
            self._socket.sendall(payload)

    def receive(self) -> tuple[bytearray, list[int]]:
        """The next message and the descriptors that came with it (the caller owns them now).
        Raises ``EOFError`` when the other end has closed."""
        header = bytearray()
        fds: list[int] = []
        while len(header) < HEADER.size:
            data, ancillary, _flags, _address = self._socket.recvmsg(
                HEADER.size - len(header), socket.CMSG_SPACE(MAX_FDS * 4)
            )
            fds.extend(_descriptors(ancillary))
            if not data:
                _close_all(fds)
                raise EOFError("the other end of the link closed")
            header += data
        size, count = HEADER.unpack(header)
        if count != len(fds):  # pragma: no cover - a protocol error, never expected
            _close_all(fds)
            raise OSError(f"expected {count} descriptors with the message, got {len(fds)}")
        return self._receive_exactly(size), fds

    def _receive_exactly(self, size: int) -> bytearray:
        buffer = bytearray(size)
        view = memoryview(buffer)
        received = 0
        while received < size:
            chunk = self._socket.recv_into(view[received:])
            if not chunk:
                raise EOFError("the other end of the link closed mid-message")
            received += chunk
        return buffer

    def poll(self, timeout: float | None = 0) -> bool:
        """Whether a message (or the end of the link) is waiting to be read, waiting up to
        ``timeout`` seconds for one (``None``: as long as it takes)."""
        readable, _, _ = select.select([self._socket], [], [], timeout)
        return bool(readable)


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return list(fds)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
