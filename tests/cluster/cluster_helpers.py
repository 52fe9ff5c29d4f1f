"""Helpers shared by the cluster tests (imported by name: pytest puts this folder on sys.path):
a small fan-out and fan-in pipeline, and processes and sockets read from /proc.

The clusters' workers cannot import this module: its functions travel by value, as a user's
would from a script the workers do not have (``madhatter run FILE`` does this for the file it
runs). The test modules register themselves the same way.
"""

from __future__ import annotations

import ipaddress
import pathlib
import socket
import sys

import cloudpickle

from madhatter import Pipeline, depends, parallel, postprocess, preprocess
from process_helpers import alive as alive
from process_helpers import all_pids as all_pids
from process_helpers import in_session as in_session
from process_helpers import proc_stat as proc_stat
from process_helpers import socket_inodes

cloudpickle.register_pickle_by_value(sys.modules[__name__])


# -- a pipeline: one source, two parallel steps reading it, one step reading both --------------


@preprocess
def numbers() -> list[int]:
    return list(range(30))


@depends(numbers)
@parallel.map(chunk_by=4)
def squares(x: int) -> int:
    return x * x


@depends(numbers)
@parallel.filter(chunk_by=3)
def odd(x: int) -> bool:
    return x % 2 == 1


@depends(squares, odd)
@postprocess
def combined(all_squares: list[int], odds: list[int]) -> tuple[int, list[int]]:
    return sum(all_squares), odds


FAN_IN = Pipeline([numbers, squares, odd, combined])
"""Its result: ``(sum of the squares of 0..29, the odd numbers of 0..29)``."""


# -- processes and sockets, from /proc ---------------------------------------------------------


def _address(hex_address: str) -> str:
    """An address of /proc/net/tcp{,6} (hex, in host byte order per 32-bit word) as text."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words)


def bound_sockets(pids: set[int], skip: set[str] | None = None) -> list[tuple[int, str]]:
    """(pid, address) of every listening TCP socket and bound UDP socket these processes hold
    (but the socket inodes in ``skip``)."""
    owners = {inode: pid for pid in pids for inode in socket_inodes(pid) - (skip or set())}
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = pathlib.Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if inode in owners and (state == "0A" or table.startswith("udp")):  # 0A: LISTEN
                address, _, port = local.rpartition(":")
                found.append((owners[inode], f"{_address(address)} port {int(port, 16)}"))
    return found


def is_loopback(address: str) -> bool:
    """Whether an address of :func:`bound_sockets` (``"ADDRESS port N"``) is on loopback."""
    ip = ipaddress.ip_address(address.split()[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1, an IPv6 socket reachable only through 127.0.0.1
    return ip.is_loopback
