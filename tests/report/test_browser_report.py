"""The report ``madhatter run --report`` writes, opened in a real headless Chromium (Debian's
``chromium``, driven by Playwright) with the network off: the graph, the timeline and the table
are visible, and the page asked for nothing but itself. Its screenshot is kept as
``artifacts/report/run-report.png`` (git-ignored) for CI to collect."""

from __future__ import annotations

import os
import pathlib

import pytest
from test_cli_report import write_report

from process_helpers import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "artifacts" / "report" / "run-report.png"


def test_the_report_opens_offline_with_its_graph_timeline_and_table(tmp_path: pathlib.Path) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="needs playwright (pip install playwright)"
    )
    report = write_report(tmp_path)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(offline=True, viewport={"width": 1200, "height": 900})
            page = context.new_page()
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(report.as_uri())

            graph = page.locator("#dag svg")
            assert graph.is_visible()
            assert graph.locator("g.dag-step").count() == 4
            assert graph.bounding_box()["width"] > 200  # type: ignore[index]
            timeline = page.locator("#timeline svg")
            assert timeline.is_visible()
            assert timeline.locator("rect.bar").count() >= 20
            assert timeline.bounding_box()["height"] > 50  # type: ignore[index]
            table = page.locator("#steps table")
            assert table.is_visible()
            square = table.get_by_role("row").filter(has_text="square")
            assert "48" in square.inner_text()
            assert page.locator("#status").inner_text() == "succeeded"
            assert page.locator("#skipped").get_by_text("unlucky").is_visible()
            titles = timeline.locator("rect.bar > title").all_text_contents()  # shown on hover
            assert any(title.startswith("square chunk ") for title in titles)

            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            assert requested == [report.as_uri()]  # the file itself, and nothing else
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000
