"""What running tasks in containers costs: the docker engine next to local processes.

    python benchmarks/bench_docker.py [--image madhatter-test/python:3.11] [--repeats 3]

Two measurements, each with its contestants side by side in this one process run:

1. **Per-task overhead**: start-to-result latency of an empty task. For a fresh container (the
   ``isolate="task"`` mode) against the same container run by hand through the Docker SDK
   (``containers.run(image, "python3 -c pass", remove=True)``, the floor any container-per-task
   tool pays), and for a warm container against a local worker process.
2. **Large payloads**: a task that returns its argument, a ``bytes`` object of 1, 16 and 64 MB,
   so the payload crosses the channel both ways: a warm container over its link socket with
   shared memory (the default with a local daemon), the same through the Docker daemon's attach
   stream (``share_memory=False``), and a local worker process, in interleaved rounds.
3. **W1 throughput** (64 items x 50 ms of pure-Python CPU, as in ``bench_local.py``, 2 workers):
   the processes engine; the docker engine warm, with a new engine per run (container start-up
   included, as ``madhatter run`` pays it) and with one engine kept across runs (as a service or a
   notebook would); and fresh containers per task. Ratios are against the processes engine.

Needs a Docker daemon and the image (``.ci/docker-up`` provides both). It measures; it does not
pass or fail.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import bench_local
import docker

from madhatter import Pipeline, depends, parallel
from madhatter.engines import Engine, Task, TaskResult, get_engine

WORKERS = 2
W1_ITEMS = 64


def empty(argument: Any) -> None:
    """The empty task: its latency is the engine's own overhead."""
    return None


def _latency(engine: Engine, resources: dict[str, Any], count: int) -> list[float]:
    times = []
    for index in range(count):
        started = time.perf_counter()
        future: Future[TaskResult] = engine.submit(
            Task(f"bench/{index}", empty, "empty", (), resources=resources)
        )
        future.result()
        times.append(time.perf_counter() - started)
    return times


def _by_hand(client: Any, image: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        client.containers.run(image, ["python3", "-c", "pass"], network_mode="none", remove=True)
        times.append(time.perf_counter() - started)
    return times


def overhead(image: str, count: int) -> None:
    client = docker.from_env()
    print(f"\n== per-task overhead: start-to-result of an empty task (median of {count})")
    rows: list[tuple[str, list[float]]] = []
    rows.append(("docker SDK: containers.run(python3 -c pass)", _by_hand(client, image, count)))
    with get_engine("docker", workers=1, image=image) as engine:
        engine.prepare({})
        rows.append(("madhatter docker, isolate='task'", _latency(engine, {"isolate": "task"}, count)))
        _latency(engine, {}, 1)  # start the warm container
        rows.append(("madhatter docker, warm container", _latency(engine, {}, count * 20)))
    with get_engine("processes", workers=1) as engine:
        _latency(engine, {}, 1)
        rows.append(("madhatter processes, warm worker", _latency(engine, {}, count * 20)))
    client.close()
    for name, times in rows:
        print(f"{name:48s} {statistics.median(times) * 1000:10.2f} ms")
    fresh, by_hand = statistics.median(rows[1][1]), statistics.median(rows[0][1])
    print(f"fresh container per task vs by hand: {by_hand / fresh:.2f}x (above 1: madhatter faster)")


def echo(argument: Any) -> Any:
    """Returns its argument: the payload crosses the channel both ways."""
    return argument


PAYLOAD_MB = (1, 16, 64)


def payloads(image: str, rounds: int) -> None:
    print(f"\n== large payloads: a bytes argument returned as it is (median of {rounds} rounds)")
    times: dict[tuple[str, int], list[float]] = {}
    with (
        get_engine("docker", workers=1, image=image) as docker_engine,
        get_engine("docker", workers=1, image=image, share_memory=False) as attached_engine,
        get_engine("processes", workers=1) as processes_engine,
    ):
        docker_engine.prepare({})
        attached_engine.prepare({})
        engines = [
            ("docker, linked (default)", docker_engine),
            ("docker, attach stream", attached_engine),
            ("processes", processes_engine),
        ]
        for _name, engine in engines:  # warm-up: start the container and the worker
            engine.submit(Task("warm", echo, "echo", b"")).result()
        for round_number in range(rounds):
            for size in PAYLOAD_MB:
                payload = bytes(size * 2**20)
                for name, engine in engines:
                    started = time.perf_counter()
                    back = engine.submit(Task(f"p{round_number}/{size}", echo, "echo", payload)).result()
                    times.setdefault((name, size), []).append(time.perf_counter() - started)
                    if back.value != payload:
                        raise AssertionError(f"{name} returned another payload")
    print(f"{'channel':28s} {'MB':>4s} {'ms':>9s} {'MB/s both ways':>15s} {'vs processes':>13s}")
    for size in PAYLOAD_MB:
        reference = statistics.median(times[("processes", size)])
        for name, _ in engines:
            median = statistics.median(times[(name, size)])
            rate = 2 * size / median
            print(f"{name:28s} {size:4d} {median * 1000:9.1f} {rate:15.0f} {median / reference:12.1f}x")


def _w1(**step: Any) -> Pipeline:
    heavy = depends(bench_local.w1_source)(parallel.map(name="w1_heavy", **step)(bench_local.w1_heavy))
    return Pipeline([bench_local.w1_source, heavy])


def _best(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times)


def throughput(image: str, repeats: int) -> None:
    print(f"\n== W1: {W1_ITEMS} items x 50 ms CPU, {WORKERS} workers (best / median of {repeats})")
    expected = bench_local.serial_w1(W1_ITEMS)
    plain = _w1()
    isolated = _w1(isolate="task")
    kept = get_engine("docker", workers=WORKERS, image=image)
    kept.prepare({})

    def check(result: object) -> None:
        if result != expected:
            raise AssertionError("a contestant returned a wrong result")

    contestants: list[tuple[str, Callable[[], object]]] = [
        ("processes engine", lambda: check(plain.run(engine="processes", workers=WORKERS))),
        (
            "docker, warm, new engine per run",
            lambda: check(plain.run(engine="docker", workers=WORKERS, image=image, inline=False)),
        ),
        ("docker, warm, engine kept", lambda: check(plain.run(engine=kept, inline=False))),
        (
            "docker, isolate='task'",
            lambda: check(isolated.run(engine="docker", workers=WORKERS, image=image, inline=False)),
        ),
    ]
    try:
        for _, run in contestants:
            run()  # warm-up: imports, the image check, forks
        results = [(name, *_best(run, repeats)) for name, run in contestants]
    finally:
        kept.shutdown(cancel_pending=False)
    reference = results[0][1]
    serial = bench_local.W1_ITEM_SECONDS * W1_ITEMS
    print(f"{'contestant':36s} {'best s':>8s} {'median s':>9s} {'vs processes':>13s} {'overhead':>9s}")
    for name, best, median in results:
        extra = (best - reference) / best
        print(f"{name:36s} {best:8.3f} {median:9.3f} {reference / best:12.2f}x {extra:8.1%}")
    print(f"(serial would take ~{serial:.1f} s; 'overhead' is the share of the run not spent as")
    print(" the processes engine spends it: container start-up, shipping, the image check)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--image", default=os.environ.get("MADHATTER_TEST_IMAGE", "madhatter-test/python:3.11")
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-count", type=int, default=10)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores; above 0.5 the figures are noisy)")
    bench_local.set_calibration(bench_local.calibrate())
    overhead(args.image, args.latency_count)
    payloads(args.image, max(3, args.repeats))
    throughput(args.image, args.repeats)


if __name__ == "__main__":
    main()
