"""Remake docs/images/tracing-trace.png: a real run's trace in a real trace viewer (Arize Phoenix).

It runs a small pipeline on the ``processes`` engine with two workers, exports its spans over
OTLP/HTTP, and, given ``--screenshot``, opens the viewer in Debian's chromium (Playwright) and
screenshots the trace. Nothing leaves 127.0.0.1: the viewer's telemetry and web fonts are off,
and the browser aborts every request to another host.

1. The viewer, in a virtualenv of its own (not the project's environment)::

       python3 -m venv /tmp/phoenix-venv
       /tmp/phoenix-venv/bin/pip install arize-phoenix
       PHOENIX_TELEMETRY_ENABLED=false PHOENIX_ALLOW_EXTERNAL_RESOURCES=false \\
       PHOENIX_HOST=127.0.0.1 PHOENIX_PORT=6006 PHOENIX_WORKING_DIR=/tmp/phoenix-work \\
           /tmp/phoenix-venv/bin/phoenix serve

2. The exporter, in the project's environment::

       pip install "madhatter[otel]" opentelemetry-exporter-otlp-proto-http

3. The run and the screenshot::

       python3 docs/screenshots/trace_viewer.py http://127.0.0.1:6006/v1/traces \\
           --screenshot http://127.0.0.1:6006

Without ``--screenshot`` it only makes the run and exports it (to any OTLP/HTTP endpoint).
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import time
import urllib.parse
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from madhatter import Pipeline, depends, parallel, postprocess, preprocess

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page, Route

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "images" / "tracing-trace.png"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PROJECT = "madhatter"  # Phoenix files the trace under this project (openinference.project.name)


@preprocess
def numbers() -> list[int]:
    return list(range(8))


@depends(numbers)
@parallel.map(chunk_by=2)
def scored(x: int) -> int:
    with trace.get_tracer("user").start_as_current_span("user score") as span:
        span.set_attribute("item", x)
        time.sleep(0.05)
        return x * x


@depends(scored)
@parallel.map
def shifted(x: int) -> int:
    return x + 1


@depends(shifted)
@postprocess
def total(values: list[int]) -> int:
    return sum(values)


def run(endpoint: str) -> None:
    resource = Resource.create({"service.name": "madhatter", "openinference.project.name": PROJECT})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    report = Pipeline([total]).execute(engine="processes", workers=2, inline=False)
    print(f"result {report.result} in {report.seconds:.2f} s")
    provider.shutdown()  # flushes the batch to the endpoint


def screenshot(ui: str) -> None:
    from playwright.sync_api import sync_playwright

    local = urllib.parse.urlsplit(ui).hostname

    def only_local(route: Route) -> None:  # web fonts and the like: never leave this machine
        if urllib.parse.urlsplit(route.request.url).hostname in (local, None):
            route.continue_()
        else:
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        tab = browser.new_page(viewport={"width": 1600, "height": 1040})
        tab.route("**/*", only_local)
        tab.goto(f"{ui}/projects")
        tab.get_by_role("link", name=PROJECT).first.click()
        tab.get_by_role("button", name="Collapse side navigation").click()
        tab.get_by_text("madhatter run total").first.click()  # the newest trace
        tab.get_by_text("madhatter chunk scored+shifted").first.wait_for()
        tab.wait_for_timeout(1000)
        # widen the trace's panel, then its span tree until the tree shows each span's timing bar
        drag(tab, trace_panel_handles(tab)[0], 0)
        drag(tab, trace_panel_handles(tab)[1], 1080)
        tab.get_by_text("madhatter chunk scored+shifted").first.click()  # its attributes on the right
        tab.wait_for_timeout(1000)
        tab.screenshot(path=str(OUT))
        browser.close()
    print(f"wrote {OUT}")


def trace_panel_handles(tab: Page) -> list[Locator]:
    """The resize handles of the trace's panel: its left edge, then between tree and span."""
    handles = [h for h in tab.get_by_role("separator").all() if h.get_attribute("aria-valuenow")]
    return [h for h in handles if (box := h.bounding_box()) and box["y"] < 200]


def drag(tab: Page, separator: Locator, x: float) -> None:
    box = separator.bounding_box()
    assert box is not None
    y = box["y"] + min(box["height"] / 2, 300)
    tab.mouse.move(box["x"] + box["width"] / 2, y)
    tab.mouse.down()
    tab.mouse.move(x, y, steps=10)
    tab.mouse.up()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "endpoint", help="OTLP/HTTP traces endpoint, e.g. http://127.0.0.1:6006/v1/traces"
    )
    parser.add_argument(
        "--screenshot", metavar="UI", help="the viewer's URL, e.g. http://127.0.0.1:6006"
    )
    args = parser.parse_args()
    run(args.endpoint)
    if args.screenshot:
        time.sleep(2)  # the viewer ingests in the background
        screenshot(args.screenshot.rstrip("/"))


if __name__ == "__main__":
    main()
