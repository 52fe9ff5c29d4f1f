"""The report page from events: its parts, the numbers in its table, escaping of whatever a user
wrote (step names, errors, parameters, items), and that it names no URL at all."""

from __future__ import annotations

import html.parser
import pathlib
import re

import madhatter
from madhatter._events import (
    ChunkDone,
    ChunkRetried,
    ChunkSplit,
    Event,
    ItemSkipped,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
)
from madhatter.report import events_from_dicts, render_events_html
from madhatter.report._dag import ordered
from madhatter.report._summary import TIMELINE_LIMIT, summarize

HOSTILE = '<script>alert("x")</script>&'
RUN = "r1"


def run_events(step: str = "double", *, finished: bool = True) -> list[Event]:
    events: list[Event] = [
        RunStarted(
            RUN,
            "counting",
            "processes",
            2,
            ("numbers", step, "total"),
            edges=(("numbers", step), (step, "total")),
            params={"label": repr(HOSTILE)},
            versions={"python": "3.11.7", "madhatter": "0.1.0", "platform": "Linux"},
            at=100.0,
        ),
        StepStarted(RUN, "numbers", at=100.0),
        StepFinished(RUN, "numbers", 0, 8, 0.01, at=100.01),
        StepStarted(RUN, step, 8, at=100.02),
        ChunkRetried(RUN, step, 1, 1, f"OSError: {HOSTILE}", at=100.2),
        ChunkSplit(RUN, step, 1, 4, 8, "timed out", at=100.3),
    ]
    for chunk in range(4):
        worker = f"worker-{chunk % 2}"
        start = 100.02 + 0.1 * chunk
        events.append(
            ChunkDone(RUN, step, chunk, 2, 2 - (chunk == 3), 0.1, worker, start, at=start + 0.1)
        )
    events.append(ItemSkipped(RUN, step, 3, "7", f"ValueError: {HOSTILE}", at=100.5))
    if finished:
        events += [
            StepFinished(RUN, step, 8, 7, 0.4, at=100.52),
            StepStarted(RUN, "total", 7, at=100.52),
            StepFinished(RUN, "total", 7, 0, 0.02, at=100.54),
            RunFinished(RUN, "succeeded", 0.6, at=100.6),
        ]
    else:
        events.append(RunFinished(RUN, "failed", 0.6, f"StepFailed: {HOSTILE}", at=100.6))
    return events


class Parts(html.parser.HTMLParser):
    """The ids, tags and attribute values of a page (and that it parses)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            self.attributes.append((name, value or ""))
            if name == "id" and value:
                self.ids.add(value)


def parts_of(page: str) -> Parts:
    parser = Parts()
    parser.feed(page)
    return parser


def test_the_page_has_the_graph_the_timeline_the_table_and_the_run_facts() -> None:
    page = render_events_html(run_events())
    parts = parts_of(page)
    assert page.startswith("<!DOCTYPE html>")
    assert {"dag", "timeline", "steps", "skipped", "incidents", "params", "environment"} <= parts.ids
    assert parts.tags.count("svg") == 2
    assert page.count('class="dag-step"') == 3
    assert page.count('class="bar"') == 4 + 2  # four chunks, two driver steps
    assert ">worker-0<" in page
    assert ">worker-1<" in page
    assert ">driver<" in page
    assert "processes with 2 workers" in page
    assert "3.11.7" in page
    assert "Linux" in page
    assert 'status-succeeded" id="status">succeeded' in page


def test_the_table_counts_items_chunks_retries_and_skips_per_step() -> None:
    summary = summarize(run_events())
    assert list(summary.steps) == ["numbers", "double", "total"]
    double = summary.steps["double"]
    assert (double.items_in, double.items_out, double.chunks) == (8, 7, 4)
    assert (double.retries, double.splits, len(double.skipped)) == (1, 1, 1)
    assert double.wall_seconds is not None
    assert abs(double.wall_seconds - 0.5) < 1e-6
    assert double.throughput is not None
    assert abs(double.throughput - 16.0) < 1e-6
    assert summary.steps["numbers"].chunks == 1  # a driver step: one call
    assert summary.status == "succeeded"


def test_every_user_string_is_escaped() -> None:
    page = render_events_html(run_events(HOSTILE, finished=False))
    assert "<script" not in page.lower()
    assert "&lt;script&gt;" in page
    assert 'alert("x")' not in page  # quotes are escaped too, so attributes cannot be closed
    assert not any(name.startswith("on") for name, _ in parts_of(page).attributes)
    assert "status-failed" in page
    assert "StepFailed: &lt;script&gt;" in page


def test_control_characters_are_made_visible() -> None:
    page = render_events_html(run_events("bell\x07step"))
    assert "\x07" not in page
    assert "bell\\x07step" in page


def test_the_page_loads_nothing_and_names_no_url() -> None:
    page = render_events_html(run_events(), result_preview="{'sum': 1}")
    assert "://" not in page
    assert "<script" not in page
    assert "<link" not in page
    assert "<img" not in page
    assert "src=" not in page
    assert "@import" not in page
    assert "url(" not in page.replace("url(#dag-arrow)", "")
    hrefs = [value for name, value in parts_of(page).attributes if name == "href"]
    assert all(href.startswith("#") for href in hrefs)
    assert "default-src 'none'" in page  # and the browser is told to load nothing


def test_a_run_that_never_started_still_gives_a_page() -> None:
    page = render_events_html([], status="failed", error="EngineError: no such engine")
    assert "status-failed" in page
    assert "EngineError: no such engine" in page
    assert "No <code>RunStarted</code> event" in page


def test_dropped_events_and_left_out_bars_are_said() -> None:
    events = run_events()
    many = [
        ChunkDone(RUN, "double", i, 1, 1, 0.0, "w", 100.0 + i * 1e-6) for i in range(TIMELINE_LIMIT + 5)
    ]
    page = render_events_html([*events[:-1], *many, events[-1]], dropped=12)
    assert 'id="dropped"' in page
    assert "12 were left out" in page
    assert "11 more chunks are not drawn" in page  # 4 + 20,005 chunks and 2 driver steps


def test_events_read_back_from_dicts_give_the_same_page() -> None:
    events = run_events()
    stored = [{**event.to_dict(), "attempt": 1} for event in events]
    stored.insert(2, {"type": "Log", "run_id": RUN, "at": 1.0, "message": "hi"})
    stored.insert(3, {"type": "ChunkDone", "run_id": RUN})  # a field missing: left out
    assert events_from_dicts(stored) == events
    strip = re.compile(r"Made by madhatter .*?</footer>")
    assert strip.sub("", render_events_html(events_from_dicts(stored))) == strip.sub(
        "", render_events_html(events)
    )


def test_steps_are_drawn_in_an_order_the_edges_allow() -> None:
    assert ordered(["c", "b", "a"], [("a", "b"), ("b", "c")]) == ["a", "b", "c"]
    assert ordered(["x", "y"], [("x", "y"), ("y", "x")]) == ["x", "y"]  # a cycle does not hang


SMALL = """
from madhatter import depends, parallel, postprocess, preprocess

@preprocess
def numbers(n: int = 6):
    return list(range(n))

@depends(numbers)
@parallel.map(chunk_by=2)
def double(x):
    return 2 * x

@depends(double)
@postprocess
def total(values):
    return sum(values)
"""


def test_a_finished_runs_to_html(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "small.py"
    path.write_text(SMALL)
    report = madhatter.Pipeline.from_module(str(path)).execute(engine="threads", params={"n": 6})
    page = report.to_html()
    assert 'status-succeeded" id="status">succeeded' in page  # though RunFinished came after
    assert page.count('class="dag-step"') == 3
    assert "<pre>30</pre>" in page  # the result's preview
    assert "<code>n</code></td><td><code>6</code>" in page
    assert "://" not in page
