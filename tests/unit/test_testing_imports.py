"""``madhatter.testing`` goes into other packages' tests: it loads no optional extra. Nor does it
load pytest until the suite is asked for, since the workers of a conformance run import the
suite's pipelines from it, in processes and containers that have no pytest."""

from __future__ import annotations

import json
import subprocess
import sys

EXTRAS = ("dask", "distributed", "ray", "docker", "fastapi", "uvicorn", "jinja2", "redis")


def _loaded_after(statements: str) -> list[str]:
    """The extras' modules (and pytest) a fresh interpreter has loaded after ``statements``."""
    code = f"""
import json, sys
{statements}
print(json.dumps(sorted(m for m in sys.modules if m.partition(".")[0] in {(*EXTRAS, "pytest")!r})))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


def test_the_helpers_and_the_suites_pipelines_load_neither_extras_nor_pytest() -> None:
    loaded = _loaded_after(
        "from madhatter.testing import FakeClusterEngine, RecordingListener, available_engines\n"
        "import madhatter.testing._pipelines"
    )
    assert loaded == []


def test_the_suite_loads_pytest_and_no_extra() -> None:
    loaded = _loaded_after("from madhatter.testing import EngineConformance")
    assert "pytest" in loaded
    assert [m for m in loaded if m.partition(".")[0] != "pytest"] == []
