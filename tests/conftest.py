"""Shared test set-up.

``MADHATTER_REQUIRE_ALL=1`` (set by CI) turns every skip into a failure: a test that needs an
optional service (a cluster, Docker, Redis, a browser) may skip on a developer's machine, never in
CI. ``faulthandler`` dumps every thread's stack if a test hangs past pytest-timeout.
"""

from __future__ import annotations

import faulthandler
import os

import pytest

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
