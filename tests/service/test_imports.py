"""The service is an extra: ``import madhatter`` and ``madhatter run`` never load its libraries,
and a missing library is one line naming ``madhatter[web]``."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
WEB_LIBRARIES = ("fastapi", "starlette", "uvicorn", "jinja2", "redis", "pydantic", "madhatter.service")


def test_the_core_and_madhatter_run_import_no_web_library() -> None:
    code = f"""
import sys
import madhatter
from madhatter.cli import main
exit_code = main(["run", {str(ROOT / "examples" / "hello.py")!r}, "--engine", "serial", "--quiet"])
loaded = [m for m in {WEB_LIBRARIES!r} if m in sys.modules]
print(exit_code, loaded)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "0 []"


def test_a_missing_web_library_is_one_line_naming_the_extra(tmp_path: pathlib.Path) -> None:
    pipeline = tmp_path / "tiny.py"
    pipeline.write_text("from madhatter import preprocess\n\n@preprocess\ndef one():\n    return [1]\n")
    code = f"""
import sys
sys.modules["fastapi"] = None  # as if it were not installed
from madhatter.cli import main
sys.exit(main(["serve", {str(pipeline)!r}, "--broker", "sqlite:///{tmp_path / "x.db"}"]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    needs = "the madhatter service needs 'fastapi': pip install 'madhatter[web]'"
    assert done.stderr.strip() == f"madhatter: MissingExtraError: {needs}"
