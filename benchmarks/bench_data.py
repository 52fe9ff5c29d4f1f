"""Data-movement benchmark: large arrays and realistic results, madhatter against the usual peers.

Run ``python benchmarks/bench_data.py`` (3 rounds, about 6 minutes on 2 cores), or add
``--rounds N``, ``--only W7,W8``, ``--contestants madhatter,joblib``, ``--quick`` (smaller inputs,
one round) and ``--json results.json``. See ``benchmarks/README.md``.

Workloads (issue 10):

* **W6, large arrays, trivial work**: 32 NumPy arrays of 16 MB, ``a.sum()`` each. The figure that
  matters is memory: peak PSS of the whole process tree <= 1.2x the serial loop's.
* **W7, large arrays, real work**: the same arrays, ``np.sort(a)[::1000].sum()`` each (tens of
  ms). Target: madhatter's time <= 0.7x the best peer's, peak PSS <= 1.3x the input plus the
  serial loop's.
* **W8, the shape of real work**: 2,000 items whose cost is skewed (log-normal: median 2 ms, the
  slowest 1 % over 100 ms; a busy loop, so it holds a core) and whose results are dicts of 100
  keys. Target: madhatter at least 1.1x the best peer's speed.

Method:

* **Every run in a fresh interpreter** (``--child WORKLOAD CONTESTANT``), so one contestant's
  memory never counts against the next: the child builds the input (seeded, the same for all),
  then times one call and prints its time and a checksum of the result. The parent samples the
  summed PSS of the child's process tree (``bench_local.PeakPss``) every 20 ms; the peak includes
  the input itself, which every contestant holds.
* **Interleaved rounds**: round 1 runs every contestant once, then round 2, ...; the machine's
  drift hits all alike. The figure is the median over rounds (best and worst are printed).
* **Pool start-up is inside the timed region** for every process contestant (as in
  ``bench_local.py``). Ray's start is not (a local Ray takes seconds to start; the question is
  what it costs to use one), so Ray is favoured here.
* Contestants: the serial loop, ``multiprocessing.Pool.map`` (chunksize 1 for the arrays,
  default for W8), ``ProcessPoolExecutor.map``, joblib (loky, with its automatic memory-mapping
  of arrays over 1 MB and its automatic batching), Ray (``ray.put`` of each array, one task per
  item; W8 in batches as a Ray user would), and madhatter (``engine="processes"``, defaults).
* Every result is checked against the serial loop's checksum.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_local import PeakPss

import madhatter
from madhatter import Pipeline, depends, parallel, preprocess

WORKERS = 2
ARRAYS, ARRAY_ITEMS = 32, 2_000_000  # 32 x 16 MB of float64
W8_ITEMS, W8_MEDIAN_SECONDS, W8_SIGMA = 2000, 0.002, 1.68  # P(cost > 100 ms) = 1 %
W8_KEYS = 100
SEED = 20261203

# -- the work, at module level so every contestant ships the same functions ----------------


def array_inputs(count: int = ARRAYS, items: int = ARRAY_ITEMS) -> list[np.ndarray]:
    rng = np.random.default_rng(SEED)
    return [rng.random(items) for _ in range(count)]


def w6_work(a: np.ndarray) -> float:
    return float(a.sum())


def w7_work(a: np.ndarray) -> float:
    return float(np.sort(a)[::1000].sum())


def w8_inputs(count: int = W8_ITEMS) -> list[tuple[int, float]]:
    """(item, seconds of work) pairs: log-normal costs, the same every run."""
    rng = np.random.default_rng(SEED)
    costs = rng.lognormal(math.log(W8_MEDIAN_SECONDS), W8_SIGMA, count)
    return [(i, float(c)) for i, c in enumerate(costs)]


def w8_work(item: tuple[int, float]) -> dict[str, float]:
    index, seconds = item
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return {f"field_{k}": index * 0.5 + k for k in range(W8_KEYS)}


def checksum(results: Sequence[Any]) -> float:
    total = 0.0
    for value in results:
        total += sum(value.values()) if isinstance(value, dict) else value
    return round(total, 6)


# -- madhatter's pipelines: the source returns the prebuilt input ------------------------------

_INPUT: list[Any] = []


@preprocess
def prebuilt() -> list[Any]:
    return _INPUT


@depends(prebuilt)
@parallel.map
def mad_w6(a: np.ndarray) -> float:
    return w6_work(a)


@depends(prebuilt)
@parallel.map
def mad_w7(a: np.ndarray) -> float:
    return w7_work(a)


@depends(prebuilt)
@parallel.map
def mad_w8(item: tuple[int, float]) -> dict[str, float]:
    return w8_work(item)


PIPELINES = {
    "W6": Pipeline([prebuilt, mad_w6]),
    "W7": Pipeline([prebuilt, mad_w7]),
    "W8": Pipeline([prebuilt, mad_w8]),
}
WORK: dict[str, Callable[[Any], Any]] = {"W6": w6_work, "W7": w7_work, "W8": w8_work}

# -- contestants ------------------------------------------------------------------------------


def run_serial(workload: str, data: list[Any]) -> list[Any]:
    work = WORK[workload]
    return [work(x) for x in data]


def run_pool(workload: str, data: list[Any]) -> list[Any]:
    chunksize = None if workload == "W8" else 1
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        return pool.map(WORK[workload], data, chunksize=chunksize)


def run_executor(workload: str, data: list[Any]) -> list[Any]:
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=context) as executor:
        return list(executor.map(WORK[workload], data))


def run_joblib(workload: str, data: list[Any]) -> list[Any]:
    import joblib

    results = joblib.Parallel(n_jobs=WORKERS, backend="loky")(
        joblib.delayed(WORK[workload])(x) for x in data
    )
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)
    return list(results)


def run_ray(workload: str, data: list[Any]) -> list[Any]:
    import ray

    work = ray.remote(WORK[workload])
    if workload == "W8":  # a Ray user batches tiny tasks
        batch = ray.remote(lambda items: [w8_work(x) for x in items])
        size = 20
        refs = [batch.remote(data[i : i + size]) for i in range(0, len(data), size)]
        return [value for part in ray.get(refs) for value in part]
    refs = [ray.put(a) for a in data]
    return list(ray.get([work.remote(ref) for ref in refs]))


def run_madhatter(workload: str, data: list[Any]) -> list[Any]:
    return list(madhatter.run(PIPELINES[workload], engine="processes", workers=WORKERS))


CONTESTANTS: dict[str, Callable[[str, list[Any]], list[Any]]] = {
    "serial": run_serial,
    "Pool": run_pool,
    "ProcessPoolExecutor": run_executor,
    "joblib": run_joblib,
    "ray": run_ray,
    "madhatter": run_madhatter,
}

# -- the child: one timed call ----------------------------------------------------------------


def child(workload: str, contestant: str, quick: bool) -> None:
    global _INPUT
    if workload == "W8":
        data: list[Any] = w8_inputs(W8_ITEMS // 4 if quick else W8_ITEMS)
    else:
        data = array_inputs(ARRAYS // 4 if quick else ARRAYS)
    _INPUT = data
    if contestant == "ray":
        import ray

        ray.init(num_cpus=WORKERS, include_dashboard=False, logging_level="ERROR")
    started = time.perf_counter()
    results = CONTESTANTS[contestant](workload, data)
    seconds = time.perf_counter() - started
    input_bytes = sum(a.nbytes for a in data) if workload != "W8" else 0
    print(json.dumps({"seconds": seconds, "checksum": checksum(results), "input": input_bytes}))


def run_child(workload: str, contestant: str, quick: bool) -> dict[str, Any]:
    command = [sys.executable, os.path.abspath(__file__), "--child", workload, contestant]
    if quick:
        command.append("--quick")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    with PeakPss(process.pid) as sampler:
        out, _ = process.communicate(timeout=600)
    if process.returncode != 0:
        raise SystemExit(f"{workload} {contestant} failed with exit code {process.returncode}")
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    report["peak_pss"] = sampler.peak
    return report


# -- the parent: interleaved rounds, ratios ---------------------------------------------------


def spread(values: list[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}"


def report_workload(workload: str, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    serial_checksum = runs["serial"][0]["checksum"] if "serial" in runs else None
    for name, reports in runs.items():
        for report in reports:
            if serial_checksum is not None and report["checksum"] != serial_checksum:
                raise SystemExit(f"{workload}: {name} returned a different result than serial")
    seconds = {name: [r["seconds"] for r in reports] for name, reports in runs.items()}
    peaks = {name: [r["peak_pss"] / 2**20 for r in reports] for name, reports in runs.items()}
    peers = [name for name in runs if name not in ("madhatter", "serial")]
    best_peer = min(peers, key=lambda name: statistics.median(seconds[name])) if peers else None
    print(f"\n{workload}: median of {len(next(iter(seconds.values())))} rounds")
    print(f"  {'contestant':<20} {'seconds':>9} {'range':>13} {'peak PSS MB':>12} {'x serial PSS':>13}")
    serial_pss = statistics.median(peaks["serial"]) if "serial" in peaks else None
    for name in runs:
        pss = statistics.median(peaks[name])
        versus = f"{pss / serial_pss:.2f}x" if serial_pss else "-"
        print(
            f"  {name:<20} {statistics.median(seconds[name]):>9.3f} {spread(seconds[name]):>13} "
            f"{pss:>12.0f} {versus:>13}"
        )
    summary: dict[str, Any] = {"seconds": seconds, "peak_pss_mb": peaks, "best_peer": best_peer}
    if "madhatter" in runs and best_peer is not None:
        ratios = [m / p for m, p in zip(seconds["madhatter"], seconds[best_peer], strict=False)]
        summary["time_vs_best_peer"] = ratios
        print(
            f"  madhatter time / {best_peer}'s, per round: {statistics.median(ratios):.3f}x "
            f"(range {spread(ratios)}; < 1 is faster)"
        )
    if "madhatter" in runs and serial_pss:
        pss_ratio = statistics.median(peaks["madhatter"]) / serial_pss
        summary["pss_vs_serial"] = pss_ratio
        input_mb = runs["madhatter"][0]["input"] / 2**20
        if input_mb:
            bound = (1.3 * input_mb + serial_pss) / serial_pss
            print(
                f"  madhatter peak PSS: {pss_ratio:.2f}x serial's (1.3x input + serial = {bound:.2f}x)"
            )
        else:
            print(f"  madhatter peak PSS: {pss_ratio:.2f}x serial's")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="W6,W7,W8", help="workloads, comma-separated")
    parser.add_argument("--contestants", default=",".join(CONTESTANTS))
    parser.add_argument("--quick", action="store_true", help="a quarter of the input, one round")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "CONTESTANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child, args.quick)
        return 0
    rounds = 1 if args.quick else args.rounds
    names = args.contestants.split(",")
    print(
        f"bench_data | {os.cpu_count()} CPUs | {WORKERS} workers | {rounds} rounds | "
        f"madhatter {madhatter.__version__} | numpy {np.__version__}"
    )
    results = {}
    for workload in args.only.split(","):
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for round_number in range(rounds):
            for name in names:
                if workload == "W6" and name == "ray":
                    continue  # W6 is about memory; Ray's object store is sized apart
                runs[name].append(run_child(workload, name, args.quick))
                print(
                    f"  {workload} round {round_number + 1} {name}: {runs[name][-1]['seconds']:.3f} s",
                    flush=True,
                )
        results[workload] = report_workload(workload, {n: r for n, r in runs.items() if r})
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
