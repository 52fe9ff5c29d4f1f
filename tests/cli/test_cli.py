"""The ``madhatter`` console script, run for real in a subprocess."""

from __future__ import annotations

import itertools
import json
import pathlib
import subprocess
import textwrap
import xml.etree.ElementTree as ElementTree

import pytest

import madhatter
from madhatter._events import RunFinished, RunStarted, event_from_dict
from process_helpers import FAILING_PIPELINE, MADHATTER

ROOT = pathlib.Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello.py"
HELLO_STEPS = ("hello", "job", "another_job", "result")


def madhatter_cli(*args: str, cwd: pathlib.Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MADHATTER), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


PARAMS_PIPELINE = """
from madhatter import depends, parallel, postprocess, preprocess

@preprocess
def numbers(count: int = 3):
    return list(range(count))

@depends(numbers)
@parallel.map
def scaled(x, factor: float = 1.0, label: str = "n"):
    return f"{label}{x * factor}"

@depends(scaled)
@postprocess
def joined(values, upper: bool = False):
    text = ",".join(values)
    return text.upper() if upper else text
"""


BROKEN_DEFINITION = """
from madhatter import depends, parallel, preprocess

@preprocess
def numbers():
    return [1]

@depends("nummbers")
@parallel.map
def typo(x):
    return x
"""


@pytest.fixture
def write(tmp_path: pathlib.Path):  # type: ignore[no-untyped-def]
    def write(name: str, text: str) -> pathlib.Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


def test_the_console_script_is_installed() -> None:
    assert MADHATTER.is_file()


@pytest.mark.parametrize("engine", ["processes", "threads", "serial"])
def test_run_hello(engine: str) -> None:
    done = madhatter_cli("run", "examples/hello.py", "--engine", engine)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[1, 2, 3, 4]\n"


def test_run_prints_progress_on_stderr_unless_quiet() -> None:
    loud = madhatter_cli("run", str(HELLO), "--engine", "serial")
    assert loud.returncode == 0, loud.stderr
    assert all(step in loud.stderr for step in HELLO_STEPS)
    assert "succeeded" in loud.stderr
    quiet = madhatter_cli("run", str(HELLO), "--engine", "serial", "--quiet")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "[1, 2, 3, 4]\n", "")


def test_run_json() -> None:
    done = madhatter_cli("run", "examples/hello.py", "--json", "-q")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [1, 2, 3, 4]


def test_run_with_params(write) -> None:  # type: ignore[no-untyped-def]
    pipeline = write("params_pipeline.py", PARAMS_PIPELINE)
    default = madhatter_cli("run", str(pipeline), "-q", "--json")
    assert json.loads(default.stdout) == "n0.0,n1.0,n2.0"
    done = madhatter_cli(
        "run", str(pipeline), "-q", "--json",
        "--param", "count=4", "--param", "factor=0.5", "--param", "label=v",
        "--param", "upper=yes",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == "V0.0,V0.5,V1.0,V1.5"


def test_unknown_param_exits_2_naming_the_known_ones(write) -> None:  # type: ignore[no-untyped-def]
    pipeline = write("params_pipeline.py", PARAMS_PIPELINE)
    done = madhatter_cli("run", str(pipeline), "--param", "colour=red")
    assert done.returncode == 2
    assert done.stdout == ""
    assert "unknown parameter 'colour'" in done.stderr
    assert "count, factor, label, upper" in done.stderr
    assert "Traceback" not in done.stderr


def test_badly_typed_or_malformed_param_exits_2(write) -> None:  # type: ignore[no-untyped-def]
    pipeline = write("params_pipeline.py", PARAMS_PIPELINE)
    typed = madhatter_cli("run", str(pipeline), "--param", "count=lots")
    assert typed.returncode == 2
    assert "'count' expects int" in typed.stderr
    malformed = madhatter_cli("run", str(pipeline), "--param", "count")
    assert malformed.returncode == 2
    assert "name=value" in malformed.stderr


def test_a_failing_step_exits_1_with_step_and_traceback(write) -> None:  # type: ignore[no-untyped-def]
    pipeline = write("failing_pipeline.py", FAILING_PIPELINE)
    done = madhatter_cli("run", str(pipeline), "--no-inline", "-q")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "StepFailed: step 'explode' failed on chunk" in done.stderr
    assert "Traceback (most recent call last)" in done.stderr
    assert "in explode" in done.stderr
    assert "ZeroDivisionError: cannot divide by item 3" in done.stderr


def test_a_definition_error_exits_2(write) -> None:  # type: ignore[no-untyped-def]
    pipeline = write("broken_pipeline.py", BROKEN_DEFINITION)
    done = madhatter_cli("run", str(pipeline))
    assert done.returncode == 2
    assert "step 'typo' depends on 'nummbers', but there is no step of that name" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_file_exits_2(tmp_path: pathlib.Path) -> None:
    done = madhatter_cli("run", str(tmp_path / "nowhere.py"))
    assert done.returncode == 2
    assert "nowhere.py" in done.stderr


def test_events_file_holds_one_json_event_per_line(tmp_path: pathlib.Path) -> None:
    events = tmp_path / "events.jsonl"
    done = madhatter_cli("run", "examples/hello.py", "-q", "--events", str(events))
    assert done.returncode == 0, done.stderr
    lines = events.read_text().splitlines()
    parsed = [event_from_dict(json.loads(line)) for line in lines]
    assert isinstance(parsed[0], RunStarted)
    assert parsed[0].steps == HELLO_STEPS
    assert isinstance(parsed[-1], RunFinished)
    assert parsed[-1].status == "succeeded"
    assert {"StepStarted", "StepFinished", "ChunkDone"} <= {type(e).__name__ for e in parsed}


def test_version() -> None:
    done = madhatter_cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"madhatter {madhatter.__version__}"


def test_help() -> None:
    done = madhatter_cli("--help")
    assert done.returncode == 0
    assert "usage: madhatter" in done.stdout
    assert "run" in done.stdout
    assert "graph" in done.stdout
    run_help = madhatter_cli("run", "--help")
    assert run_help.returncode == 0
    for option in ("--engine", "--workers", "--param", "--events", "--json", "--no-inline"):
        assert option in run_help.stdout
    assert "serial" in run_help.stdout
    assert "processes" in run_help.stdout


def test_no_command_is_a_usage_error() -> None:
    done = madhatter_cli()
    assert done.returncode == 2
    assert "usage: madhatter" in done.stderr


# -- graph -------------------------------------------------------------------------------------


def test_graph_text() -> None:
    done = madhatter_cli("graph", "examples/hello.py")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    positions = [
        next(i for i, line in enumerate(lines) if f" {step} " in f" {line} ") for step in HELLO_STEPS
    ]
    assert positions == sorted(positions)  # topological order
    assert "@parallel(n=4)" in done.stdout
    assert "output" in done.stdout


def test_graph_dot() -> None:
    done = madhatter_cli("graph", "examples/hello.py", "-f", "dot")
    assert done.returncode == 0, done.stderr
    assert done.stdout.lstrip().startswith("digraph")
    assert done.stdout.rstrip().endswith("}")
    for upstream, downstream in itertools.pairwise(HELLO_STEPS):
        assert f'"{upstream}" -> "{downstream}"' in done.stdout


def test_graph_mermaid() -> None:
    done = madhatter_cli("graph", "examples/hello.py", "--format", "mermaid")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] in ("flowchart", "graph")
    assert done.stdout.count("-->") == 3
    assert all(step in done.stdout for step in HELLO_STEPS)


def test_graph_svg_to_a_file(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "hello.svg"
    done = madhatter_cli("graph", "examples/hello.py", "-f", "svg", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    root = ElementTree.fromstring(out.read_text())  # well-formed XML
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    text = " ".join(root.itertext())
    assert all(step in text for step in HELLO_STEPS)


def test_graph_unknown_format_exits_2() -> None:
    done = madhatter_cli("graph", "examples/hello.py", "-f", "png")
    assert done.returncode == 2
    assert "invalid choice: 'png'" in done.stderr
