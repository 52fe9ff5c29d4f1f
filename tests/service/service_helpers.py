"""Helpers shared by the service tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.request
from typing import Any

from process_helpers import Workers as Workers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_pipeline(folder: pathlib.Path, name: str, source: str) -> pathlib.Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


class Server:
    """A real ``madhatter serve`` process on a free 127.0.0.1 port."""

    def __init__(self, args: list[str], port: int, log: pathlib.Path) -> None:
        self.args, self.port, self.log = args, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        import time
        import urllib.request

        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "madhatter", "serve", *self.args, "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start:\n{self.log.read_text()}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    """Run a ``madhatter`` client command (``submit``, ``runs``, ``status``) against ``url``."""
    command = [sys.executable, "-m", "madhatter", *args, "--url", url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)


# Pipelines the tests write to files for real `serve` and `worker` processes to load.

TRIVIAL = """
from madhatter import depends, parallel, postprocess, preprocess

@preprocess
def numbers(n: int = 4):
    return list(range(n))

@depends(numbers)
@parallel.map
def double(x):
    return 2 * x

@depends(double)
@postprocess
def total(values):
    return sum(values)
"""

GATED = """
import os, pathlib, time
from madhatter import depends, postprocess, preprocess

@preprocess
def gate(folder: str = ""):
    here = pathlib.Path(folder)
    (here / f"started-{os.getpid()}").touch()
    while not (here / "open").exists():
        time.sleep(0.02)
    return [os.getpid()]

@depends(gate)
@postprocess
def who(pids):
    return pids[0]
"""
