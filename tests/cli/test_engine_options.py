"""``--engine-option`` and engines installed by entry point, through the real command line.

The third-party engine is a real installed distribution: a module and a ``.dist-info`` folder
with an ``entry_points.txt``, on ``PYTHONPATH``, found by :mod:`importlib.metadata` as pip's
would be."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from madhatter._errors import ParameterError
from madhatter.cli import _arguments as arguments
from madhatter.cli import build_parser
from madhatter.cli._arguments import engine_options

ENGINE_MODULE = '''
"""A third-party engine in one file: the threads engine, recording the options it was given."""

import json
import pathlib

from madhatter.engines.threads import ThreadsEngine


class RecordingEngine(ThreadsEngine):
    name = "recording"

    def __init__(self, workers=None, *, record, **options):
        super().__init__(workers)
        self._record, self._options, self._tasks = pathlib.Path(record), options, 0

    def submit(self, task):
        self._tasks += 1
        return super().submit(task)

    def shutdown(self, *, cancel_pending):
        super().shutdown(cancel_pending=cancel_pending)
        self._record.write_text(json.dumps({"options": self._options, "tasks": self._tasks}))
'''

PIPELINE = """
from madhatter import depends, parallel, postprocess, preprocess

@preprocess
def numbers(count: int = 6):
    return list(range(count))

@depends(numbers)
@parallel.map
def squared(x):
    return x * x

@depends(squared)
@postprocess
def total(values):
    return sum(values)
"""


def install_engine(folder: pathlib.Path) -> None:
    """Install the recording engine into ``folder`` as a distribution declaring the entry point."""
    (folder / "madhatter_recording.py").write_text(ENGINE_MODULE)
    dist_info = folder / "madhatter_recording-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: madhatter-recording\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[madhatter.engines]\nrecording = madhatter_recording:RecordingEngine\n"
    )


def madhatter_with_engine(folder: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m madhatter ARGS`` with the engine's distribution on ``PYTHONPATH``."""
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "madhatter", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=folder,
        env={**os.environ, "PYTHONPATH": path},
    )


@pytest.fixture
def any_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every engine takes any option, for the tests of parsing alone."""
    monkeypatch.setattr(arguments, "check_options", lambda name, options: None)


@pytest.fixture
def installed(tmp_path: pathlib.Path) -> pathlib.Path:
    install_engine(tmp_path)
    (tmp_path / "squares.py").write_text(textwrap.dedent(PIPELINE))
    return tmp_path


def test_an_engine_installed_by_entry_point_runs_with_its_options(installed: pathlib.Path) -> None:
    record, events = installed / "record.json", installed / "events.jsonl"
    done = madhatter_with_engine(
        installed,
        "run",
        "squares.py",
        "--engine",
        "recording",
        "--no-inline",
        "--events",
        str(events),
        "--engine-option",
        f"record={record}",
        "--engine-option",
        "size=3",
        "--engine-option",
        "ratio=0.5",
        "--engine-option",
        "fast=true",
        "--engine-option",
        "label=k=v",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "55\n"
    recorded = json.loads(record.read_text())
    assert recorded["options"] == {"size": 3, "ratio": 0.5, "fast": True, "label": "k=v"}
    assert [type(v) for v in recorded["options"].values()] == [int, float, bool, str]
    assert recorded["tasks"] > 0  # the parallel step's tasks ran on it
    started = json.loads(events.read_text().splitlines()[0])
    assert (started["type"], started["engine"]) == ("RunStarted", "recording")


def test_the_installed_engine_is_listed_by_help(installed: pathlib.Path) -> None:
    done = madhatter_with_engine(installed, "--help")
    assert done.returncode == 0, done.stderr
    assert "recording" in done.stdout.partition("engines:")[2]


def test_an_option_the_engine_does_not_take_exits_2_naming_its_options(installed: pathlib.Path) -> None:
    done = madhatter_with_engine(
        installed, "run", "squares.py", "--engine", "processes", "--engine-option", "colour=red"
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "madhatter: ParameterError: the 'processes' engine has no option 'colour' "
        "(its options: start_method)\n"
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--engine-option", "n=3", "--engine-option", "n=4"], {"n": 4}),
        (
            ["--engine-option", "memory=512m", "--engine-option", "on=False"],
            {"memory": "512m", "on": False},
        ),
        (["--engine-option", "address=tcp://a:1", "--address", "tcp://b:2"], {"address": "tcp://b:2"}),
        (["--image", "repo/name:tag"], {"image": "repo/name:tag"}),
        (["--engine-option", "x="], {"x": ""}),
        ([], {}),
    ],
)
def test_engine_options_with_the_shorthands_on_top(
    argv: list[str], expected: dict[str, object], any_options: None
) -> None:
    args = build_parser().parse_args(["run", "pipeline.py", *argv])
    assert engine_options(args) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--engine-option", "novalue"], "--engine-option takes name=value, not 'novalue'"),
        (["--engine-option", "workers=2"], "'workers' is a setting of the run; use --workers"),
        (["--engine-option", "params=x"], "'params' is a setting of the run$"),
    ],
)
def test_bad_engine_options_are_parameter_errors(
    argv: list[str], message: str, any_options: None
) -> None:
    args = build_parser().parse_args(["run", "pipeline.py", *argv])
    with pytest.raises(ParameterError, match=message):
        engine_options(args)


def test_serve_and_worker_take_engine_options(any_options: None) -> None:
    parser = build_parser()
    for command in (["serve"], ["worker"]):
        args = parser.parse_args([*command, "--engine-option", "start_method=spawn"])
        assert engine_options(args) == {"start_method": "spawn"}
