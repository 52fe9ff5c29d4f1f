"""End to end in a real headless Chromium (Debian's ``chromium``, driven by Playwright): start a run
from the form, watch its progress reach 100% live, see what its step printed, open the result,
re-run it and see that it came from the worker's chunk cache; see what a step printed on the
workers of a real Dask cluster under its step and chunk; screenshots of the run pages are kept
under ``artifacts/`` (git-ignored) for CI to collect."""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Callable, Iterator

import pytest
from service_helpers import Server, Workers, free_port, get_json, write_pipeline

from cluster.conftest import DaskCluster
from process_helpers import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "artifacts" / "browser"

STEADY = """
import time
from madhatter import depends, parallel, postprocess, preprocess

@preprocess
def items(n: int = 10):
    return list(range(n))

@depends(items)
@parallel.map(chunk_by=2, timeout=60)
def square(x):
    time.sleep(0.02)
    print(f"squared {x}")
    return x * x

@depends(square)
@postprocess
def total(values):
    return {"count": len(values), "sum": sum(values)}
"""


@pytest.fixture
def server(tmp_path: pathlib.Path) -> Iterator[Server]:
    pipeline = write_pipeline(tmp_path, "steady", STEADY)
    broker = f"sqlite:///{tmp_path / 'madhatter.db'}"
    args = [str(pipeline), "--broker", broker, "--with-worker", "--engine", "threads"]
    args += ["--cache", str(tmp_path / "cache")]
    started = Server(args, free_port(), tmp_path / "server.log")
    started.start()
    try:
        yield started
    finally:
        started.stop()


def test_a_run_started_from_the_form_is_followed_live_to_its_result(
    server: Server, wait_until: Callable[..., bool]
) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="needs playwright (pip install playwright)"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 420, "height": 900})  # a narrow screen
            page.goto(server.url + "/")
            page.get_by_label("n (int, default 10)", exact=True).fill("60")
            page.get_by_role("button", name="Start a run of steady").click()
            page.wait_for_url("**/runs/*")
            run_id = page.url.rpartition("/")[2]

            # the page follows the run over server-sent events, without a reload
            page.wait_for_function("Number(document.getElementById('run').dataset.updates || 0) > 0")
            page.wait_for_selector("#result-preview", timeout=60_000)  # shown once it is over
            bars = page.locator("progress")
            assert bars.count() == 3
            assert bars.evaluate_all("bars => bars.map(bar => bar.value)") == [100, 100, 100]
            assert page.locator("#run-status").inner_text() == "succeeded"
            assert "'sum': 70210" in page.locator("#result-preview").inner_text()
            assert page.locator("#run-cached-fact").is_hidden()  # the first run computed all
            printed = page.locator("#step-output").inner_text()  # what square printed
            assert all(f"squared {x}" in printed for x in range(60)), printed[:300]
            assert "[square chunk 0 stdout]" in printed
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "run-page.png"), full_page=True)

            # the re-run finds every item of square in the worker's chunk cache, and says so
            page.get_by_role("button", name="Re-run with the same parameters").click()
            page.wait_for_url(lambda url: url.rpartition("/")[2] not in ("", run_id))
            page.wait_for_selector("#result-preview", timeout=60_000)
            page.wait_for_function("Number(document.getElementById('run').dataset.updates || 0) > 0")
            assert page.locator("#run-status").inner_text() == "succeeded"
            assert "'sum': 70210" in page.locator("#result-preview").inner_text()
            square = page.get_by_role("row").filter(has_text="square")
            assert "60 of 60 items from cache" in square.inner_text()  # redrawn by the script
            assert page.locator("#run-cached").is_visible()
            assert page.locator("#run-cached").inner_text().startswith("60 of 60 items from cache")
            page.screenshot(path=str(SCREENSHOTS / "rerun-page.png"), full_page=True)

            result = page.goto(f"{server.url}/api/runs/{run_id}/result")
            assert result is not None
            assert result.status == 200
            assert json.loads(result.text()) == {"count": 60, "sum": 70210}
        finally:
            browser.close()
    assert (SCREENSHOTS / "run-page.png").stat().st_size > 1000


GATED = """
import pathlib, time
from madhatter import depends, parallel, preprocess

@preprocess
def items(gate: str = "", n: int = 4):
    return list(range(n))

@depends(items)
@parallel.map(chunk_by=1, timeout=60)  # a timeout: on the engine's threads, never inline
def wait_for_gate(x, gate: str = ""):
    if x == 3:  # after the others' output: the pieces below come one after the other
        time.sleep(1.0)
    print(f"passed the gate with {x}")
    if x == 3:  # a second piece of output, sent after the first while the chunk runs on
        time.sleep(0.7)
        print("still at the gate")
    while x == 3 and not pathlib.Path(gate).exists():  # the last item holds the run open
        time.sleep(0.05)
    return x
"""


def test_what_finished_chunks_printed_reaches_the_page_while_the_run_goes_on(
    tmp_path: pathlib.Path,
) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="needs playwright (pip install playwright)"
    )
    pipeline = write_pipeline(tmp_path, "gated", GATED)
    broker = f"sqlite:///{tmp_path / 'madhatter.db'}"
    args = [str(pipeline), "--broker", broker, "--with-worker", "--engine", "threads"]
    server = Server(args, free_port(), tmp_path / "server.log")
    server.start()
    gate = tmp_path / "gate"
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(server.url + "/")
                page.get_by_label('gate (str, default "")', exact=True).fill(str(gate))
                page.get_by_role("button", name="Start a run of gated").click()
                page.wait_for_url("**/runs/*")
                # chunks 0-2 are done, chunk 3 waits at the gate: no new event comes, yet what
                # they printed reaches the open page over the stream
                page.wait_for_function(
                    "['0', '1', '2'].every(x => document.getElementById('step-output')"
                    ".textContent.includes('passed the gate with ' + x))",
                    timeout=30_000,
                )
                assert page.locator("#run-status").inner_text() == "running"
                # chunk 3 still runs: what it printed so far is on the page too, in pieces
                # (every 0.5 s), one after the other with nothing between, so under one head
                page.wait_for_function(
                    "document.getElementById('step-output').textContent"
                    ".includes('passed the gate with 3\\nstill at the gate')",
                    timeout=30_000,
                )
                assert page.locator("#run-status").inner_text() == "running"
                heads = page.locator("#step-output .output-head")
                assert heads.filter(has_text="wait_for_gate chunk 3 stdout").count() == 1
                gate.touch()
                page.wait_for_selector("#result-preview", timeout=60_000)
                assert "passed the gate with 3" in page.locator("#step-output").inner_text()
            finally:
                browser.close()
    finally:
        gate.touch()
        server.stop()


def _sections(printed: str) -> dict[tuple[str, int, str], str]:
    """The text of ``#step-output`` under each ``[STEP chunk N STREAM]`` head, by (step, chunk,
    stream)."""
    parts = re.split(r"^\[(\w+) chunk (\d+) (\w+)\]\n", printed, flags=re.MULTILINE)
    assert parts[0] == "", parts[0][:300]  # nothing before the first head
    found: dict[tuple[str, int, str], str] = {}
    heads_and_texts = zip(parts[1::4], parts[2::4], parts[3::4], parts[4::4], strict=True)
    for step, chunk, stream, text in heads_and_texts:
        key = (step, int(chunk), stream)
        found[key] = found.get(key, "") + text
    return found


def test_what_a_step_printed_on_dask_workers_is_under_its_step_and_chunk_on_the_page(
    tmp_path: pathlib.Path,
    servers: Callable[..., Server],
    workers: Workers,
    dask_cluster: DaskCluster,
) -> None:
    """STEADY's square has a timeout, so its chunks always go to the cluster's workers (separate
    processes that cannot import the pipeline file) and what they print comes back from there."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="needs playwright (pip install playwright)"
    )
    pipeline = write_pipeline(tmp_path, "steady", STEADY)
    broker = f"sqlite:///{tmp_path / 'madhatter.db'}"
    server = servers(str(pipeline), "--broker", broker)
    workers.start(broker, str(pipeline), "--engine", "dask", "--address", dask_cluster.address)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.get_by_label("n (int, default 10)", exact=True).fill("12")
            page.get_by_role("button", name="Start a run of steady").click()
            page.wait_for_url("**/runs/*")
            run_id = page.url.rpartition("/")[2]
            page.wait_for_selector("#result-preview", timeout=60_000)
            assert page.locator("#run-status").inner_text() == "succeeded"
            assert "'sum': 506" in page.locator("#result-preview").inner_text()
            sections = _sections(page.locator("#step-output").inner_text())
            page.screenshot(path=str(tmp_path / "dask-run-page.png"), full_page=True)
        finally:
            browser.close()
    # each chunk of square printed its two lines, under its own head and no other
    assert sorted(sections) == [("square", chunk, "stdout") for chunk in range(6)], sections
    for (_, chunk, _), text in sections.items():
        assert text == f"squared {2 * chunk}\nsquared {2 * chunk + 1}\n", (chunk, text)
    # and every chunk ran on a worker of the cluster, none inline in the service's worker
    events = get_json(f"{server.url}/api/runs/{run_id}/events")["events"]
    ran_on = {e["chunk"]: e["worker"] for e in events if e["type"] == "ChunkDone"}
    assert sorted(ran_on) == list(range(6))
    assert all(str(worker).startswith("tcp://127.0.0.1:") for worker in ran_on.values()), ran_on
