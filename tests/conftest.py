"""Shared test set-up.

``MADHATTER_REQUIRE_ALL=1`` (set by CI) turns every skip into a failure: a test that needs an
optional service (a cluster, Docker, Redis, a browser) may skip on a developer's machine, never in
CI. ``faulthandler`` dumps every thread's stack if a test hangs past pytest-timeout.
"""

from __future__ import annotations

import faulthandler
import os
import pathlib
import time
from collections.abc import Callable

import pytest

import madhatter.testing

faulthandler.enable()

REQUIRE_ALL = os.environ.get("MADHATTER_REQUIRE_ALL") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under MADHATTER_REQUIRE_ALL=1 (CI may not skip): {reason}"


# -- shared fixtures -------------------------------------------------------------------------


@pytest.fixture(params=madhatter.testing.available_engines())
def engine(request: pytest.FixtureRequest) -> str:
    """Every engine that can run here; in CI a missing one fails (see ``REQUIRE_ALL``)."""
    return str(request.param)


def _proc_stat(pid: str) -> tuple[int, int, int, str] | None:
    """(ppid, pgid, session, state) of a process from /proc, or None if it is gone."""
    try:
        text = pathlib.Path("/proc", pid, "stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # the command name may contain spaces and ")"
    return int(fields[1]), int(fields[2]), int(fields[3]), fields[0]


def processes_where(predicate: Callable[[int, int, int, str], bool]) -> list[int]:
    """PIDs of the processes whose (ppid, pgid, session, state) satisfy ``predicate``."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(entry.name)
            if stat is not None and predicate(*stat):
                found.append(int(entry.name))
    return found


@pytest.fixture
def child_pids() -> Callable[[], list[int]]:
    """A function listing this process's children (any state, zombies included) from /proc."""
    me = os.getpid()
    return lambda: processes_where(lambda ppid, pgid, session, state: ppid == me)


@pytest.fixture
def session_pids() -> Callable[[int], list[int]]:
    """A function listing the processes of a session (by session id or process group id)."""
    return lambda sid: processes_where(lambda ppid, pgid, session, state: sid in (pgid, session))


@pytest.fixture
def wait_until() -> Callable[..., bool]:
    """``wait_until(predicate, timeout=...)``: poll until it holds; False if the deadline passes."""

    def wait(predicate: Callable[[], object], timeout: float = 30.0, every: float = 0.02) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(every)
        return bool(predicate())

    return wait
