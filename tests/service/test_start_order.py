"""Workers and ``serve`` start in any order (systemd, compose and Kubernetes do): a worker started
before any pipeline is registered waits and runs what ``serve`` registers later, and a running
worker learns the pipelines of a ``serve`` restarted with more. Real processes, on both stores."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

import pytest
from service_helpers import TRIVIAL, Server, Workers, cli, free_port, write_pipeline

from madhatter.service import Store
from madhatter.service._records import FAILED

pytestmark = pytest.mark.slow

EXTRA = """
from madhatter import depends, postprocess, preprocess

@preprocess
def letters(word: str = "abc"):
    return list(word)

@depends(letters)
@postprocess
def shout(values):
    return "".join(values).upper()
"""

WAITING = "no pipelines are registered on this store yet"


def test_a_worker_started_before_serve_waits_and_runs_what_serve_registers(
    tmp_path: pathlib.Path,
    store_url: str,
    workers: Workers,
    servers: Callable[..., Server],
    wait_until: Callable[..., bool],
) -> None:
    pipeline = write_pipeline(tmp_path, "trivial", TRIVIAL)
    worker = workers.start(store_url, "--engine", "serial")
    assert wait_until(lambda: WAITING in workers.logs(), timeout=60), workers.logs()
    assert worker.poll() is None  # it waits; it does not exit

    server = servers(str(pipeline), "--broker", store_url)
    done = cli("submit", "trivial", "--param", "n=5", "--wait", url=server.url)
    assert (done.returncode, done.stdout) == (0, "20\n"), done.stderr + workers.logs()
    assert "now also runs trivial" in workers.logs()


def test_a_running_worker_learns_the_pipelines_of_a_restarted_serve(
    tmp_path: pathlib.Path,
    store_url: str,
    workers: Workers,
    servers: Callable[..., Server],
    wait_until: Callable[..., bool],
) -> None:
    trivial = write_pipeline(tmp_path, "trivial", TRIVIAL)
    extra = write_pipeline(tmp_path, "extra", EXTRA)
    port = free_port()
    server = servers(str(trivial), "--broker", store_url, port=port)
    worker = workers.start(store_url, "--engine", "serial")
    assert wait_until(lambda: "running trivial" in workers.logs(), timeout=60), workers.logs()
    done = cli("submit", "trivial", "--wait", url=server.url)
    assert (done.returncode, done.stdout) == (0, "12\n"), done.stderr + workers.logs()

    server.stop()
    again = servers(str(trivial), str(extra), "--broker", store_url, port=port)
    done = cli("submit", "extra", "--param", "word=hatter", "--wait", url=again.url)
    assert (done.returncode, done.stdout) == (0, "'HATTER'\n"), done.stderr + workers.logs()
    assert worker.poll() is None  # the same worker, never restarted
    assert len(workers.processes) == 1
    assert "now also runs extra" in workers.logs()


def test_a_recorded_pipeline_that_fails_to_load_fails_its_runs_and_says_why(
    tmp_path: pathlib.Path,
    store: Store,
    store_url: str,
    workers: Workers,
    wait_until: Callable[..., bool],
) -> None:
    trivial = write_pipeline(tmp_path, "trivial", TRIVIAL)
    missing = tmp_path / "gone.py"
    store.set_meta("pipelines", json.dumps([f"trivial={trivial}", f"gone={missing}"]))
    broken = store.submit("gone", {})
    good = store.submit("trivial", {"n": 2})
    workers.start(store_url, "--engine", "serial")

    def finished(run_id: str) -> bool:
        record = store.get(run_id)
        return record is not None and record.terminal

    assert wait_until(lambda: finished(broken.id) and finished(good.id), timeout=60), workers.logs()
    record = store.get(broken.id)
    assert record is not None
    assert record.error is not None
    assert record.status == FAILED
    assert "pipeline 'gone' failed to load on this worker" in record.error.message
    assert store.result(good.id) == ("json", b"2")
    assert "cannot load pipeline 'gone' recorded by serve" in workers.logs()
