"""Old against new: madhatter at two revisions on the same workloads, interleaved.

Run ``python benchmarks/bench_revisions.py --old REV`` (default ``HEAD~1``; any git revision) to
time this checkout's ``src/`` (or ``--new REV``'s) against REV's, or ``--old-src DIR`` for a
source tree at hand. It
prints, per workload, the median of the per-round ratios new/old with their spread (min-max):
below 1.00 the new code is faster. It is how a restructure shows "no regression beyond noise".

Method:

* **Interleaved rounds, in fresh processes.** Two versions of a package cannot share a process,
  so each measurement is a child process (``--child``) that imports madhatter from one revision's
  source (``PYTHONPATH``). Rounds alternate the order (old new, new old, ...) so that a drift in
  machine speed (1.5-2x within minutes here) hits both alike, and each round's ratio compares two
  neighbours in time.
* **The same work.** The children import ``bench_local`` and ``bench_cluster`` from this folder
  and run exactly their madhatter contestants: W1-W4 on the local engines; W1 and W3 on a Dask
  cluster and on a local Ray that each child starts before timing (its start-up is excluded) and
  gives madhatter by address, with ``inline=False``, as ``bench_cluster`` does. The pure-Python
  work is calibrated once, in this process, and passed to every child.
* **One figure per child and workload**: a warm-up call on a small input, then the best of
  ``--inner`` timed calls.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
LOCAL = {"W1": 64, "W2": 1_000_000, "W3": 200_000, "W4": 1000}
CLUSTER = {"dask W1": 64, "dask W3": 200_000, "ray W1": 64, "ray W3": 200_000}
WARMUP_FRACTION = 0.05


def _child(keys: Sequence[str], inner: int) -> dict[str, float]:
    """Time madhatter's contestant of each workload in ``keys`` in this process."""
    import bench_local

    import madhatter

    pipelines = {
        "W1": ("processes", bench_local.W1_PIPELINE),
        "W2": ("processes", bench_local.W2_PIPELINE),
        "W3": ("processes", bench_local.W3_PIPELINE),
        "W4": ("threads", bench_local.W4_PIPELINE),
    }
    results: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        runners: dict[str, Callable[[int], Any]] = {}
        addresses: dict[str, str] = {}
        for key in keys:
            engine, _, workload = key.rpartition(" ")
            if not engine:
                name, pipeline = pipelines[key]
                threads = bench_local.W4_THREADS if name == "threads" else bench_local.WORKERS
                runners[key] = _runner(madhatter.run, pipeline, engine=name, workers=threads)
                continue
            if engine not in addresses:  # one cluster per engine, shared by its workloads
                addresses[engine] = _cluster(engine, stack)
            address = addresses[engine]
            pipeline = bench_local.W1_PIPELINE if workload == "W1" else bench_local.W3_PIPELINE
            runners[key] = _runner(madhatter.run, pipeline, engine=engine, address=address, inline=False)
        for key, run in runners.items():
            size = {**LOCAL, **CLUSTER}[key]
            run(max(2, int(size * WARMUP_FRACTION)))
            best = float("inf")
            for _ in range(inner):
                started = time.perf_counter()
                run(size)
                best = min(best, time.perf_counter() - started)
            results[key] = best
    return results


def _runner(run: Callable[..., Any], pipeline: Any, **options: Any) -> Callable[[int], Any]:
    return lambda n: run(pipeline, params={"n": n}, **options)


def _cluster(engine: str, stack: contextlib.ExitStack) -> str:
    """Start the shared cluster of ``bench_cluster`` for ``engine`` (once per child)."""
    import bench_cluster

    unavailable = (
        bench_cluster.dask_unavailable() if engine == "dask" else bench_cluster.ray_unavailable()
    )
    if unavailable:  # also sets what Ray reads on import, as bench_cluster's own run does
        raise SystemExit(f"{engine}: {unavailable}")
    side = bench_cluster.DaskSide(stack) if engine == "dask" else bench_cluster.RaySide(stack)
    return side.address


def _checkout(revision: str, stack: contextlib.ExitStack) -> pathlib.Path:
    """The ``src`` folder of ``revision``, checked out in a temporary folder."""
    folder = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mh-rev-")))
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder / "src"


def _measure(
    src: pathlib.Path, keys: Sequence[str], inner: int, env: dict[str, str]
) -> dict[str, float]:
    child_env = {**env, "PYTHONPATH": os.pathsep.join([str(src), str(HERE)])}
    command = [sys.executable, __file__, "--child", ",".join(keys), "--inner", str(inner)]
    done = subprocess.run(command, env=child_env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"a child failed ({src}):\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default="HEAD~1", help="git revision to compare against")
    parser.add_argument("--old-src", help="a source folder to compare against instead of --old")
    parser.add_argument("--new", help="git revision to time (default: this checkout's src/)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default 4)")
    parser.add_argument("--inner", type=int, default=1, help="timed calls per child (best of)")
    parser.add_argument("--only", help="comma-separated workloads (default: all)")
    parser.add_argument("--local", action="store_true", help="W1-W4 on local engines only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child.split(","), args.inner)))
        return 0
    keys = list(LOCAL) + ([] if args.local else list(CLUSTER))
    if args.only:
        keys = [k for k in keys if k in args.only.split(",")]
    import bench_local

    env = {**os.environ, bench_local.CALIBRATION_ENV: repr(bench_local.calibrate())}
    with contextlib.ExitStack() as stack:
        old = pathlib.Path(args.old_src) if args.old_src else _checkout(args.old, stack)
        new = _checkout(args.new, stack) if args.new else ROOT / "src"
        ratios: dict[str, list[float]] = {k: [] for k in keys}
        for round_number in range(args.rounds):
            order = [("old", old), ("new", new)]
            if round_number % 2:
                order.reverse()
            figures = {label: _measure(src, keys, args.inner, env) for label, src in order}
            for key in keys:
                ratios[key].append(figures["new"][key] / figures["old"][key])
            shown = ", ".join(f"{k} {figures['old'][k]:.2f}->{figures['new'][k]:.2f}s" for k in keys)
            print(f"round {round_number + 1} ({order[0][0]} first): {shown}", flush=True)
    print(f"\nnew/old time, median of {args.rounds} interleaved rounds [min-max]:")
    for key, values in ratios.items():
        print(f"  {key:8} {statistics.median(values):.3f}x  [{min(values):.3f}-{max(values):.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
