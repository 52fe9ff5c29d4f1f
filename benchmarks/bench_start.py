"""Start-up benchmark: what each way of starting the processes engine's workers costs.

Run ``python benchmarks/bench_start.py`` (``--rounds N``, default 7; about 20 seconds). Each round
times, for every start method, an engine of 2 workers from creation until both have answered a
trivial task, then shut down; the methods take turns within each round (interleaved, so the
machine's drift hits all alike). The figure is the median over rounds, with the best and worst.

* ``default, 1 thread``: the default with no other thread in the driver, which forks (the common
  ``madhatter run``).
* ``default, threads``: the default while another thread runs (a notebook, the service, a user's
  thread), which starts fresh interpreters.
* ``fork``, ``forkserver``, ``spawn``: ``multiprocessing``'s, chosen with ``start_method=``. The
  fork server lives as long as the driver, so its first start (``forkserver, first``) is timed
  apart from later ones.

Each round runs in a fresh interpreter (``--child``), so every ``forkserver, first`` is a real
first start and no method inherits another's threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time

METHODS = ["default, 1 thread", "default, threads", "fork", "forkserver, first", "forkserver", "spawn"]


def pid(_: object) -> int:
    import os

    return os.getpid()


def time_start(start_method: str | None) -> float:
    from madhatter.engines import Task
    from madhatter.engines.processes import ProcessesEngine

    started = time.perf_counter()
    with ProcessesEngine(workers=2, start_method=start_method) as engine:
        pids: set[int] = set()
        while len(pids) < 2:  # both workers up: a fresh task per answer until two pids answered
            futures = [engine.submit(Task(f"t{i}", pid, "pid", i)) for i in range(2)]
            pids.update(future.result(timeout=60).value for future in futures)
        elapsed = time.perf_counter() - started
    return elapsed


def child() -> None:
    """One round: every method once, in the order of ``METHODS`` (the threaded ones last)."""
    time_start("fork")  # untimed: imports and first-use costs, which a run pays before its engine

    seconds = {"default, 1 thread": time_start(None), "fork": time_start("fork")}
    seconds["forkserver, first"] = time_start("forkserver")
    seconds["forkserver"] = time_start("forkserver")
    seconds["spawn"] = time_start("spawn")
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    seconds["default, threads"] = time_start(None)
    stop.set()
    other.join()
    print(json.dumps(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return
    rounds: list[dict[str, float]] = []
    for number in range(args.rounds):
        done = subprocess.run(
            [sys.executable, __file__, "--child"], capture_output=True, text=True, check=True
        )
        rounds.append(json.loads(done.stdout))
        print(f"round {number + 1}/{args.rounds} done", file=sys.stderr)
    fork = statistics.median(r["default, 1 thread"] for r in rounds)
    print(f"{'start method':<20} {'median ms':>10} {'best':>8} {'worst':>8} {'vs default fork':>16}")
    for method in METHODS:
        values = [r[method] * 1000 for r in rounds]
        median = statistics.median(values)
        print(
            f"{method:<20} {median:>10.1f} {min(values):>8.1f} {max(values):>8.1f}"
            f" {median / (fork * 1000):>15.1f}x"
        )


if __name__ == "__main__":
    main()
