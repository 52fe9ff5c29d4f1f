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


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):  # type: ignore[no-untyped-def]
    """The same for a whole module skipped at import (``pytest.importorskip`` at its top)."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under MADHATTER_REQUIRE_ALL=1 (CI may not skip): {reason}"


# -- shared fixtures -------------------------------------------------------------------------


LOCAL_ENGINES = ("serial", "threads", "processes")
"""The conformance suite's engines. Cluster engines have their own modules under tests/cluster,
which share one real cluster per module instead of starting one per run."""


@pytest.fixture(params=[e for e in madhatter.testing.available_engines() if e in LOCAL_ENGINES])
def engine(request: pytest.FixtureRequest) -> str:
    """Every local engine; each runs the same tests and must give the same results."""
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
    return lambda: [
        pid
        for pid in processes_where(lambda ppid, pgid, session, state: ppid == me)
        if not _is_resource_tracker(pid)
    ]


def _is_resource_tracker(pid: int) -> bool:
    """multiprocessing's resource tracker: started on first use by any library (a Dask local
    cluster, for one), it lives as long as the interpreter by design and is nobody's leftover."""
    try:
        return b"multiprocessing.resource_tracker" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


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
