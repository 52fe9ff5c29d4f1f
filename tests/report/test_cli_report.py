"""``madhatter run FILE --report run.html`` for real, in a subprocess: on two worker processes,
and for a failed run (whose report is what a bug report needs)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import textwrap

from process_helpers import FAILING_PIPELINE, MADHATTER

PIPELINE = """
import time
from madhatter import depends, parallel, postprocess, preprocess

@preprocess
def numbers(n: int = 48):
    return list(range(n))

@depends(numbers)
@parallel.map(chunk_by=4, on_error="skip")
def square(x):
    time.sleep(0.01)
    if x == 13:
        raise ValueError(f"<b>unlucky</b> item {x}")
    return x * x

@depends(numbers)
@parallel.filter(chunk_by=6)
def even(x):
    time.sleep(0.005)
    return x % 2 == 0

@depends(square, even)
@postprocess
def total(squares, evens):
    return {"sum": sum(squares), "evens": len(evens)}
"""


def run_cli(folder: pathlib.Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = folder / "pipeline.py"
    path.write_text(textwrap.dedent(source))
    command = [str(MADHATTER), "run", str(path), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, cwd=folder)


def write_report(folder: pathlib.Path) -> pathlib.Path:
    """A report of the 4-step pipeline on two worker processes (the browser test opens it)."""
    report = folder / "run.html"
    args = ["--engine", "processes", "--workers", "2", "--no-inline", "--param", "n=48"]
    done = run_cli(folder, PIPELINE, *args, "--report", str(report))
    assert done.returncode == 0, done.stderr
    assert f"report written to {report}" in done.stderr
    return report


def test_run_writes_a_report_of_two_worker_processes(tmp_path: pathlib.Path) -> None:
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert 'status-succeeded" id="status">succeeded' in page
    assert "processes with 2 workers" in page
    assert page.count('class="dag-step"') == 4
    lanes = re.findall(r"<title>([^<]*)</title>[^<]*</text>", page)  # the timeline's lanes
    assert lanes[0] == "driver"
    assert len(lanes) == 3
    assert all(lane.startswith("pid-") for lane in lanes[1:])
    assert page.count('class="bar"') >= 12 + 8  # square's and even's chunks, at least
    assert "ValueError: &lt;b&gt;unlucky&lt;/b&gt; item 13" in page  # the skipped item
    assert "<code>n</code></td><td><code>48</code>" in page
    assert "&#x27;evens&#x27;: 24" in page  # the result's preview
    assert "://" not in page


def test_a_failed_run_still_writes_its_report(tmp_path: pathlib.Path) -> None:
    report = tmp_path / "failed.html"
    done = run_cli(tmp_path, FAILING_PIPELINE, "-q", "--engine", "threads", "--report", str(report))
    assert done.returncode == 1
    page = report.read_text(encoding="utf-8")
    assert 'status-failed" id="status">failed' in page
    assert "ZeroDivisionError: cannot divide by item 3" in page  # the worker's traceback
    assert page.count('class="dag-step"') == 2


def test_no_report_unless_asked(tmp_path: pathlib.Path) -> None:
    done = run_cli(tmp_path, FAILING_PIPELINE, "-q", "--engine", "serial")
    assert done.returncode == 1
    assert list(tmp_path.glob("*.html")) == []
