"""The progress display without a real kernel: its HTML and text, when it is shown, and that a
plain ``python script.py`` shows nothing unless asked (the real kernel: test_notebook_kernel.py)."""

from __future__ import annotations

import importlib.util
import io
import pathlib
import subprocess
import sys
import textwrap
import types
from typing import Any

import pytest

import madhatter
from madhatter import _notebook, depends, parallel, postprocess, preprocess
from madhatter._events import (
    ChunkDone,
    ChunkRetried,
    ItemSkipped,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
)
from madhatter._progress import RunProgress

# -- a fake IPython, to be "in a kernel" ----------------------------------------------------------


class FakeHandle:
    def __init__(self, shown: Any) -> None:
        self.shown = [shown]

    def update(self, shown: Any) -> None:
        self.shown.append(shown)


class FakeShell:
    kernel = object()


@pytest.fixture
def handles(monkeypatch: pytest.MonkeyPatch) -> list[FakeHandle]:
    """Pretend this process is a Jupyter kernel; the displays it creates, in order."""
    created: list[FakeHandle] = []

    def display(shown: Any, *, display_id: bool) -> FakeHandle:
        assert display_id is True
        created.append(FakeHandle(shown))
        return created[-1]

    ipython = types.ModuleType("IPython")
    ipython.get_ipython = FakeShell  # type: ignore[attr-defined]
    ipython_display = types.ModuleType("IPython.display")
    ipython_display.display = display  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", ipython_display)
    return created


def test_only_a_shell_with_a_kernel_is_a_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not _notebook.in_kernel()  # IPython not even imported: no kernel, and no import
    assert "IPython" not in sys.modules
    ipython = types.ModuleType("IPython")
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    ipython.get_ipython = lambda: None  # type: ignore[attr-defined]
    assert not _notebook.in_kernel()  # imported by a plain script
    ipython.get_ipython = lambda: object()  # type: ignore[attr-defined]
    assert not _notebook.in_kernel()  # terminal IPython: a shell, no kernel
    ipython.get_ipython = FakeShell  # type: ignore[attr-defined]
    assert _notebook.in_kernel()


def test_which_listener_each_progress_option_adds(
    handles: list[FakeHandle], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(_notebook.progress_listener(None), _notebook.NotebookProgress)
    assert isinstance(_notebook.progress_listener(True), _notebook.NotebookProgress)
    assert _notebook.progress_listener(False) is None
    monkeypatch.delitem(sys.modules, "IPython")
    assert _notebook.progress_listener(None) is None
    assert isinstance(_notebook.progress_listener(True), _notebook.TextProgress)
    assert _notebook.progress_listener(False) is None


# -- the display ----------------------------------------------------------------------------------


def _events(step: str = "score") -> list[Any]:
    return [
        RunStarted("r", "my <pipe> & co", "processes", 4, ("load", step), at=100.0),
        StepStarted("r", "load", total=None, at=100.0),
        StepFinished("r", "load", 0, 10, 0.0, at=100.1),
        StepStarted("r", step, total=10, at=100.1),
        ChunkDone("r", step, 0, 4, 4, 0.3, "w1", 100.1, cached=2, at=100.5),
        ChunkRetried("r", step, 1, 1, "boom", at=100.6),
        ItemSkipped("r", step, 1, "7", "ValueError: <bad>", at=100.7),
    ]


def _view(events: list[Any], now: float = 101.1) -> _notebook.ProgressView:
    progress = RunProgress()
    for event in events:
        progress.add(event)
    return _notebook.ProgressView(
        progress, pipeline="my <pipe> & co", engine="processes", workers=4, seconds=1.1, now=now
    )


def test_the_text_form_aligns_one_line_per_step() -> None:
    text = repr(_view(_events()))
    assert text.splitlines() == [
        "my <pipe> & co on processes (4 workers): running 1.1s, 1 skipped",
        "load   ########################  100%   0/0 items         done",
        "score  #########---------------   40%  4/10 items  4.0/s  eta 2s  "
        "2 cached, 1 retried, 1 skipped",
    ]


def test_the_text_form_of_a_finished_run() -> None:
    ends = [StepFinished("r", "score", 10, 9, 1.0, at=101.0), RunFinished("r", "failed", 1.0)]
    events = [*_events(), *ends]
    lines = repr(_view(events)).splitlines()
    assert lines[0] == "my <pipe> & co on processes (4 workers): failed 1.1s, 1 skipped"
    assert all(" 100% " in line for line in lines[1:])
    assert "10/10 items  11.1/s  done  2 cached, 1 retried, 1 skipped" in lines[2]


def test_the_html_escapes_names_and_links_only_web_addresses() -> None:
    view = _view([*_events(step="<script>alert(1)</script>")])
    page = view._repr_html_()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "my &lt;pipe&gt; &amp; co" in page
    assert "width:40.0%" in page
    assert "1 skipped" in page
    view.dashboard = "javascript:alert(1)"
    assert "<a " not in view._repr_html_()
    view.dashboard = "http://host:8787/status?a=1&b=<2>"
    assert 'href="http://host:8787/status?a=1&amp;b=&lt;2&gt;"' in view._repr_html_()
    assert "dashboard: http://host:8787/status?a=1&b=<2>" in repr(view)


def test_the_view_is_a_snapshot() -> None:
    progress = RunProgress()
    for event in _events():
        progress.add(event)
    view = _notebook.ProgressView(progress, now=101.1)
    progress.add(StepFinished("r", "score", 10, 10, 1.0, at=101.0))
    assert " 40% " in repr(view)


# -- the listeners ---------------------------------------------------------------------------------


def test_the_display_updates_at_most_so_often_and_always_at_the_end(handles: list[FakeHandle]) -> None:
    listener = _notebook.NotebookProgress(update_seconds=3600)
    for event in _events():
        listener(event)
    assert len(handles) == 1
    assert len(handles[0].shown) == 2  # created, then load's StepFinished; chunks wait
    listener(StepFinished("r", "score", 10, 9, 1.0, at=101.0))
    listener(RunFinished("r", "succeeded", 1.2))
    assert len(handles) == 1
    assert listener.updates == 3
    final = repr(handles[0].shown[-1])
    assert final.startswith("my <pipe> & co on processes (4 workers): succeeded 1.2s, 1 skipped")
    assert final.count("100%") == 2


def test_a_run_that_never_started_shows_nothing(handles: list[FakeHandle]) -> None:
    _notebook.NotebookProgress()(RunFinished("r", "failed", 0.1, "engine did not start"))
    assert handles == []


@preprocess
def numbers(n: int = 40) -> list[int]:
    return list(range(n))


@depends(numbers)
@parallel.map(chunk_by=4, on_error="skip")
def halve(x: int) -> float:
    if x == 3:
        raise ValueError("three")
    return x / 2


@depends(halve)
@postprocess
def count(values: list[float]) -> int:
    return len(values)


PIPELINE = madhatter.Pipeline([numbers, halve, count], name="halves")


def test_execute_shows_one_display_in_a_kernel_unless_told_not_to(handles: list[FakeHandle]) -> None:
    report = PIPELINE.execute(engine="threads", workers=2)
    assert report.result == 39
    assert len(handles) == 1
    final = repr(handles[0].shown[-1])
    assert final.startswith("halves on threads (2 workers): succeeded")
    assert final.count(" 100% ") == 3
    assert "1 skipped" in final
    PIPELINE.execute(engine="serial", progress=False)
    assert len(handles) == 1


def test_text_progress_is_drawn_once_at_the_end_off_a_terminal() -> None:
    stream = io.StringIO()
    PIPELINE.execute(engine="serial", listeners=[_notebook.TextProgress(stream)])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("halves on serial")
    assert "1 skipped" in lines[0]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_text_progress_redraws_in_place_on_a_terminal() -> None:
    stream = Terminal()
    PIPELINE.execute(engine="serial", listeners=[_notebook.TextProgress(stream)])
    assert "\x1b[F\x1b[2K" in stream.getvalue()
    assert stream.getvalue().endswith(" 100%  39/39 items" + stream.getvalue().split("39/39 items")[-1])


# -- a plain script --------------------------------------------------------------------------------

SCRIPT = """
import IPython  # imported, as some libraries do, but no kernel
import madhatter
from madhatter import depends, parallel, postprocess, preprocess

@preprocess
def numbers(n: int = 50):
    return list(range(n))

@depends(numbers)
@parallel.map(chunk_by=5)
def double(x):
    return 2 * x

@depends(double)
@postprocess
def total(values):
    return sum(values)

if __name__ == "__main__":
    print(madhatter.Pipeline([numbers, double, total]).run(engine="processes", workers=2{progress}))
"""


@pytest.mark.parametrize("progress", ["", ", progress=None", ", progress=True"])
def test_a_plain_script_shows_progress_only_when_asked(tmp_path: pathlib.Path, progress: str) -> None:
    if importlib.util.find_spec("IPython") is None:  # the script's, not imported here
        pytest.skip("the script imports IPython (with ipykernel, in the test extra)")
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT.format(progress=progress)))
    command = [sys.executable, str(script)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=True)
    assert done.stdout == "2450\n"
    if progress.endswith("True"):
        lines = done.stderr.splitlines()
        assert lines[0].startswith("total on processes (2 workers): succeeded"), done.stderr
        assert len(lines) == 4, done.stderr
    else:
        assert done.stderr == ""
