"""Tracing off costs no import: a program that never imports opentelemetry does not get it
from madhatter (installed or not)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_no_opentelemetry_import_when_off() -> None:
    """A user who never imports opentelemetry: madhatter imports none of it, even in workers."""
    code = textwrap.dedent(
        """
        import sys
        from madhatter import Pipeline, depends, parallel, preprocess

        @preprocess
        def numbers():
            return list(range(20))

        @depends(numbers)
        @parallel.map(chunk_by=5)
        def doubled(x):
            import sys
            return [m for m in sys.modules if m.startswith("opentelemetry")]

        for engine in ("serial", "threads", "processes"):
            report = Pipeline([doubled]).execute(engine=engine, workers=2, inline=False)
            assert all(not r for r in report.result), report.result
        loaded = [m for m in sys.modules if m.startswith("opentelemetry")]
        assert not loaded, loaded
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
