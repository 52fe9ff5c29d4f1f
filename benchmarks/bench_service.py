"""Service benchmark: queue latency and throughput of trivial runs, on SQLite and on Redis.

Run ``python benchmarks/bench_service.py`` (< 2 minutes on 2 cores; ``--runs 50`` for a quicker
look, ``--json FILE`` to keep the figures). Needs the ``web`` extra; the Redis rows need Debian's
``redis-server`` (started here on a free 127.0.0.1 port) and the huey rows need ``huey``.

Three contestants per back end, each with 2 worker processes and the same trivial job:

* **madhatter service**: ``madhatter serve`` (HTTP, validation, the store) and 2 ``madhatter worker
  --engine serial`` processes; runs are submitted over HTTP, and each run is a whole pipeline run
  (events, result encoding, fenced writes).
* **madhatter store alone**: the same store (``madhatter.service._store``) with 2 bare worker loops
  (lease, then finish with a constant result): the queue without HTTP or pipelines, so the gap to
  the row above is what the service adds.
* **huey alone** (the queue library we evaluated, on the same SQLite file type or Redis server): a
  task that returns its start time, 2 consumer processes polling every 0.1 s like our workers
  (on Redis, huey blocks on its queue and our workers on a wake-up list: neither polls there).

Figures: **latency** is submit-to-start of one run into an idle queue (median and 95th percentile
of ``--probes`` runs, one at a time), **throughput** is runs completed per second when ``--runs``
are submitted at once (from the first submit to the last completion).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

PIPELINE = """
from madhatter import depends, postprocess, preprocess

@preprocess
def numbers(n: int = 3):
    return list(range(n))

@depends(numbers)
@postprocess
def total(values):
    return sum(values)
"""

BARE_WORKER = """
import sys
from madhatter.service._records import SUCCEEDED, Outcome
from madhatter.service._store import open_store
store = open_store(sys.argv[1])
while True:
    lease = store.lease("bare")
    if lease is None:
        store.wait_for_work(0.1)  # as madhatter's worker does
        continue
    store.finish(lease.run.id, lease.token, Outcome(SUCCEEDED, None, "json", b"3", "3", 3))
"""

HUEY_TASKS = """
import os, time
from huey import RedisHuey, SqliteHuey

url = os.environ["BENCH_HUEY"]
if url.startswith("redis://"):
    huey = RedisHuey("bench", url=url)
else:
    huey = SqliteHuey("bench", filename=url)

@huey.task()
def trivial(n):
    return time.time(), sum(range(n))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)


@contextmanager
def processes(*commands: list[str], env: dict[str, str] | None = None) -> Iterator[None]:
    started = [
        subprocess.Popen(
            c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env
        )
        for c in commands
    ]
    try:
        yield
    finally:
        for process in started:
            with _quiet():
                os.killpg(process.pid, signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextmanager
def _quiet() -> Iterator[None]:
    try:
        yield
    except ProcessLookupError:
        pass


@contextmanager
def redis_server() -> Iterator[str | None]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(binary):
        yield None
        return
    port = free_port()
    command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    with processes(command):
        import redis

        client = redis.Redis(port=port)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(up, 20, "redis-server")
        yield f"redis://127.0.0.1:{port}"


def summary(latencies: list[float], runs: int, seconds: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "latency_median_ms": 1000 * statistics.median(ordered),
        "latency_p95_ms": 1000 * ordered[max(0, int(len(ordered) * 0.95) - 1)],
        "runs_per_second": runs / seconds,
    }


# -- contestants ------------------------------------------------------------------------------


def bench_service(broker: str, folder: pathlib.Path, runs: int, probes: int) -> dict[str, float] | None:
    from madhatter.service._client import Client
    from madhatter.service._store import open_store

    pipeline = folder / "trivial.py"
    pipeline.write_text(textwrap.dedent(PIPELINE))
    port = free_port()
    me = [sys.executable, "-m", "madhatter"]
    serve = [*me, "serve", str(pipeline), "--broker", broker, "--port", str(port)]
    worker = [*me, "worker", str(pipeline), "--broker", broker, "--engine", "serial"]
    with processes(serve, worker, worker):
        client = Client(f"http://127.0.0.1:{port}")
        wait_for(lambda: _answers(client.url), 30, "the server")
        store = open_store(broker)

        def finished(run_id: str) -> bool:
            record = store.get(run_id)
            return record is not None and record.terminal

        for _ in range(5):  # warm-up: imports, first connections
            run_id = client.submit("trivial", {})["id"]
            wait_for(lambda run_id=run_id: finished(run_id), 60, "a warm-up run")
        latencies = []
        for _ in range(probes):
            run_id = client.submit("trivial", {})["id"]
            wait_for(lambda run_id=run_id: finished(run_id), 60, "a probe run")
            record = store.get(run_id)
            assert record is not None
            assert record.started_at is not None
            latencies.append(record.started_at - record.submitted_at)
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda _: client.submit("trivial", {})["id"], range(runs)))
        wait_for(
            lambda: all(finished(i) for i in ids[-10:]) and all(finished(i) for i in ids), 300, "runs"
        )
        seconds = time.monotonic() - started
        store.close()
    return summary(latencies, runs, seconds)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1):
            return True
    except OSError:
        return False


def bench_store(broker: str, folder: pathlib.Path, runs: int, probes: int) -> dict[str, float] | None:
    from madhatter.service._store import open_store

    worker = [sys.executable, "-c", BARE_WORKER, broker]
    store = open_store(broker)
    with processes(worker, worker):

        def finished(run_id: str) -> bool:
            record = store.get(run_id)
            return record is not None and record.terminal

        for _ in range(5):
            run_id = store.submit("trivial", {}).id
            wait_for(lambda run_id=run_id: finished(run_id), 60, "a warm-up run")
        latencies = []
        for _ in range(probes):
            run_id = store.submit("trivial", {}).id
            wait_for(lambda run_id=run_id: finished(run_id), 60, "a probe run")
            record = store.get(run_id)
            assert record is not None
            assert record.started_at is not None
            latencies.append(record.started_at - record.submitted_at)
        started = time.monotonic()
        ids = [store.submit("trivial", {}).id for _ in range(runs)]
        wait_for(lambda: all(finished(i) for i in ids), 300, "runs")
        seconds = time.monotonic() - started
    store.close()
    return summary(latencies, runs, seconds)


def bench_huey(target: str, folder: pathlib.Path, runs: int, probes: int) -> dict[str, float] | None:
    try:
        import huey  # noqa: F401
    except ModuleNotFoundError:
        return None
    (folder / "huey_tasks.py").write_text(textwrap.dedent(HUEY_TASKS))
    env = {**os.environ, "BENCH_HUEY": target, "PYTHONPATH": str(folder)}
    os.environ["BENCH_HUEY"] = target
    sys.path.insert(0, str(folder))
    sys.modules.pop("huey_tasks", None)  # one per back end
    import huey_tasks

    consumer = [
        sys.executable, "-m", "huey.bin.huey_consumer", "huey_tasks.huey",
        "-w", "1", "-d", "0.1", "-m", "0.1", "-b", "1.0", "-q",
    ]  # fmt: skip
    with processes(consumer, consumer, env=env):
        for _ in range(5):
            huey_tasks.trivial(3).get(blocking=True, timeout=60)
        latencies = []
        for _ in range(probes):
            submitted = time.time()
            started_at, _ = huey_tasks.trivial(3).get(blocking=True, timeout=60)
            latencies.append(started_at - submitted)
        started = time.monotonic()
        results = [huey_tasks.trivial(3) for _ in range(runs)]
        for result in results:
            result.get(blocking=True, timeout=300)
        seconds = time.monotonic() - started
    sys.path.remove(str(folder))
    return summary(latencies, runs, seconds)


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs submitted at once (default 200)")
    parser.add_argument("--probes", type=int, default=20, help="latency samples (default 20)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.2f} (figures need a quiet machine)")

    rows: list[dict[str, Any]] = []
    with redis_server() as redis_url, tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        backends: list[tuple[str, Callable[[str], str], Callable[[str], str]]] = [
            (
                "sqlite",
                lambda name: f"sqlite:///{folder / name}.db",
                lambda name: str(folder / f"{name}.db"),
            )
        ]
        if redis_url:
            databases = {"service": 1, "store": 2, "huey": 3}
            backends.append(
                ("redis", lambda name: f"{redis_url}/{databases[name]}", lambda name: f"{redis_url}/3")
            )
        else:
            print("redis-server not found: Redis rows skipped")
        for backend, store_url, huey_url in backends:
            for name, bench, url in (
                ("madhatter service", bench_service, store_url("service")),
                ("madhatter store alone", bench_store, store_url("store")),
                ("huey alone", bench_huey, huey_url("huey")),
            ):
                figures = bench(url, folder, args.runs, args.probes)
                if figures is None:
                    print(f"{name}: not installed, skipped")
                    continue
                rows.append({"backend": backend, "contestant": name, **figures})

    header = f"{'latency median':>16}{'latency p95':>14}{'runs/s (2 workers)':>21}"
    print(f"\n{'back end':<9}{'contestant':<24}{header}")
    for row in rows:
        print(
            f"{row['backend']:<9}{row['contestant']:<24}{row['latency_median_ms']:>13.1f} ms"
            f"{row['latency_p95_ms']:>11.1f} ms{row['runs_per_second']:>21.1f}"
        )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
