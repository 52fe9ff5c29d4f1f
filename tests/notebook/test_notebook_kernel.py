"""A real notebook on a real kernel: ``Pipeline.run()`` on processes shows one live display.

``nbclient`` executes a notebook with an ``ipykernel`` of this interpreter; the cell defines a small
pipeline (one item raises under ``on_error="skip"``) and runs it with no progress code at all. The
cell's outputs must hold the display's final state (every step at 100%, one item skipped), and the
kernel must have replaced that display in place during the run (``update_display_data``
messages, counted as nbclient receives them). The executed notebook is kept under
``artifacts/notebook/`` for a look.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys
import time
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs nbformat (the test extra)")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs nbclient (the test extra)")
if importlib.util.find_spec("ipykernel") is None:  # the kernel's, not imported here
    pytest.skip("the notebook test needs ipykernel (the test extra)", allow_module_level=True)

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "notebook"
KERNEL = "madhatter-test"

CELL = """\
import time
import madhatter
from madhatter import depends, parallel, postprocess, preprocess

@preprocess
def numbers(n: int = 300):
    return list(range(n))

@depends(numbers)
@parallel.map(chunk_by=10, on_error="skip")
def slow_square(x):
    time.sleep(0.01)
    if x == 7:
        raise ValueError("seven is unlucky")
    return x * x

@depends(slow_square)
@postprocess
def total(values):
    return len(values), sum(values)

madhatter.Pipeline([numbers, slow_square, total], name="demo").run(engine="processes", workers=2)
"""


class CountingClient(nbclient.NotebookClient):
    """Records every display message the kernel sends for the cell, as nbclient receives it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.messages: list[tuple[str, str | None, dict[str, Any]]] = []

    def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
        kind = msg["msg_type"]
        if kind in ("display_data", "update_display_data"):
            transient = msg["content"].get("transient") or {}
            self.messages.append((kind, transient.get("display_id"), msg["content"]["data"]))
        return super().process_message(msg, cell, cell_index)


@pytest.fixture
def kernel_spec(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernel spec running ipykernel on this very interpreter (where madhatter is installed)."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "madhatter test", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL


def test_a_run_in_a_notebook_shows_one_live_display(kernel_spec: str, tmp_path: pathlib.Path) -> None:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CELL)])
    client = CountingClient(
        notebook, timeout=60, kernel_name=kernel_spec, resources={"metadata": {"path": str(tmp_path)}}
    )
    started = time.monotonic()
    client.execute()
    seconds = time.monotonic() - started
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, ARTIFACTS / "progress.ipynb")

    outputs = notebook.cells[0].outputs
    displays = [o for o in outputs if o.output_type == "display_data"]
    assert len(displays) == 1, outputs  # one display per run
    final_text = displays[0].data["text/plain"]
    final_html = displays[0].data["text/html"]
    lines = final_text.splitlines()
    assert lines[0].startswith("demo on processes (2 workers): succeeded"), final_text
    assert lines[0].endswith(", 1 skipped"), final_text
    steps = {line.split()[0]: line for line in lines[1:]}
    assert set(steps) == {"numbers", "slow_square", "total"}, final_text
    assert all(" 100% " in line and "  done" in line for line in steps.values()), final_text
    assert "300/300 items" in steps["slow_square"], final_text
    assert steps["slow_square"].endswith("1 skipped"), final_text
    assert "299/299 items" in steps["total"], final_text
    assert final_html.count("width:100.0%") == 3, final_html
    assert "1 skipped" in final_html, final_html
    # the result is shown too
    assert any(o.output_type == "execute_result" and "(299," in o.data["text/plain"] for o in outputs)

    # one display, created once and replaced in place while the run went on
    created = [m for m in client.messages if m[0] == "display_data"]
    updates = [m for m in client.messages if m[0] == "update_display_data"]
    assert len(created) == 1, client.messages
    assert created[0][1], client.messages
    assert {display_id for _, display_id, _ in updates} == {created[0][1]}
    assert len(updates) > 1, updates
    during = [data["text/plain"] for _, _, data in updates if ": running" in data["text/plain"]]
    assert any("slow_square" in text and " 100% " not in text.split("slow_square")[1] for text in during)
    assert updates[-1][2] == dict(displays[0].data)  # the cell keeps the last update
    assert seconds < 60, seconds
