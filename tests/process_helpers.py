"""Watching and starting the processes that tests create, from /proc: shared by the cluster,
chaos, engine and CLI tests (imported by name: pytest puts ``tests/`` on ``sys.path`` for the
root ``conftest.py``)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import sysconfig
import time

MADHATTER = pathlib.Path(sysconfig.get_path("scripts"), "madhatter")
"""The installed ``madhatter`` command."""


def proc_stat(pid: int) -> tuple[int, int, str] | None:
    """(parent, session, state) of a process, or None if it is gone."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[3]), fields[0]


def all_pids() -> list[int]:
    return [int(entry.name) for entry in pathlib.Path("/proc").iterdir() if entry.name.isdigit()]


def in_session(session: int) -> list[int]:
    """The processes of a session, zombies included."""
    return [pid for pid in all_pids() if (stat := proc_stat(pid)) is not None and stat[1] == session]


def alive(pid: int) -> bool:
    """Whether a process exists and has not exited (a zombie has)."""
    stat = proc_stat(pid)
    return stat is not None and stat[2] != "Z"


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets a process holds open."""
    inodes = set()
    try:
        for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def scheduler_address(scheduler_file: pathlib.Path, timeout: float) -> str:
    """The address a starting Dask scheduler writes to its ``--scheduler-file``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if scheduler_file.exists():
            try:
                address: str = json.loads(scheduler_file.read_text())["address"]
                return address
            except (ValueError, KeyError):
                pass
        time.sleep(0.1)
    raise RuntimeError("the Dask scheduler did not start")


def default_sigint() -> None:
    """In a child (``preexec_fn``): Ctrl-C raises KeyboardInterrupt even if pytest runs as a
    background job, whose shell starts it (and so its children) with SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Workers:
    """Starts ``madhatter worker`` processes and stops every one of them at the end."""

    def __init__(self, log_folder: pathlib.Path) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        self.log_folder = log_folder

    def start(self, store_url: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.log_folder / f"worker-{len(self.processes)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "madhatter", "worker", "--broker", store_url, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.log_folder.glob("worker-*.log")))

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
"""Debian's chromium, which the browser tests drive with Playwright (no browser download)."""
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


FAILING_PIPELINE = """
from madhatter import depends, parallel, preprocess

@preprocess
def numbers():
    return [1, 2, 3, 4]

@depends(numbers)
@parallel.map
def explode(x):
    if x == 3:
        raise ZeroDivisionError(f"cannot divide by item {x}")
    return x
"""
"""A pipeline file for the CLI tests whose step raises on item 3 (``ZeroDivisionError``)."""
