"""A pipeline file to edit between runs, run by the real CLI, and what each run did.

``PIPELINE`` is A -> B -> C (three ``@parallel.map`` steps, fused into one stage) after a source
of ``ITEMS`` numbers. Each step appends one line per item it really computes to the side-effect log
(``MH_LOG``): what the cache saved is what is missing from it. B calls a helper, ``bump``; C reads
the run parameter ``scale``. Tests edit the file's text between runs.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import subprocess
from typing import Any

from process_helpers import MADHATTER

PIPELINE = '''
import os

from madhatter import depends, parallel, preprocess

ITEMS = int(os.environ.get("MH_ITEMS", "200"))


def note(step, x):
    with open(os.environ["MH_LOG"], "a") as log:
        log.write(f"{step} {x}\\n")


def bump(x):
    """Add one."""
    return x + 1


@preprocess
def numbers():
    return list(range(ITEMS))


@depends(numbers)
@parallel.map(chunk_by=CHUNK_BY)
def step_a(x):
    note("a", x)
    return x * 2


@depends(step_a)
@parallel.map(chunk_by=CHUNK_BY)
def step_b(x):
    note("b", x)
    return bump(x)


@depends(step_b)
@parallel.map(chunk_by=CHUNK_BY)
def step_c(x, scale=3):
    note("c", x)
    return x * scale
'''


def expected(items: int = 200, scale: int = 3) -> list[int]:
    return [(x * 2 + 1) * scale for x in range(items)]


def write_pipeline(
    folder: pathlib.Path, *, chunk_by: int | None = 10, text: str = PIPELINE
) -> pathlib.Path:
    path = folder / "three_steps.py"
    path.write_text(text.replace("CHUNK_BY", repr(chunk_by)))
    return path


class Runs:
    """Runs ``madhatter run FILE --cache DIR`` and reads what each run computed and found."""

    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder
        self.cache = folder / "cache"
        self.log = folder / "side-effects.log"
        self.number = 0

    def run(self, pipeline: pathlib.Path, *args: str, items: int = 200, check: bool = True) -> Run:
        self.number += 1
        events = self.folder / f"events-{self.number}.jsonl"
        self.log.write_text("")
        done = subprocess.run(
            [
                str(MADHATTER), "run", str(pipeline), "--cache", str(self.cache), "--json",
                "--quiet", "--events", str(events), *args,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "MH_LOG": str(self.log), "MH_ITEMS": str(items)},
        )  # fmt: skip
        if check:
            assert done.returncode == 0, done.stderr
        return Run(done, self.log.read_text(), events)


class Run:
    def __init__(self, done: subprocess.CompletedProcess[str], log: str, events: pathlib.Path) -> None:
        self.done = done
        self.result: Any = json.loads(done.stdout) if done.returncode == 0 else None
        self.computed = collections.Counter(line.split()[0] for line in log.splitlines())
        self.cached: collections.Counter[str] = collections.Counter()
        for line in events.read_text().splitlines():
            event = json.loads(line)
            if event["type"] == "ChunkDone":
                self.cached[event["step"].removeprefix("step_")] += event["cached"]

    def __repr__(self) -> str:
        return f"<Run computed={dict(self.computed)} cached={dict(self.cached)}>"
