"""Tracing benchmark: W1 (64 items x 50 ms, processes engine, 2 workers) with OpenTelemetry
tracing on against off, interleaved.

Run ``python benchmarks/bench_tracing.py`` (``--rounds N``, default 5; about 30 s). Each run is a
fresh interpreter (``--child on|off``) that times ``Pipeline.execute``: "on" sets an SDK tracer
provider whose spans go to an in-memory exporter (what a user with OpenTelemetry configured
pays, bar the export itself); "off" never imports ``opentelemetry``. Rounds alternate the order;
the figure is the median of the per-round ratios on/off, with the best and worst. Target: <= 1.02.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def child(mode: str) -> None:
    if mode == "on":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
    from bench_local import W1_PIPELINE

    started = time.perf_counter()
    W1_PIPELINE.execute(engine="processes", workers=2, params={"n": 64})
    seconds = time.perf_counter() - started
    spans = len(exporter.get_finished_spans()) if mode == "on" else 0
    print(json.dumps({"seconds": seconds, "spans": spans}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    import os

    from bench_local import CALIBRATION_ENV, calibrate

    env = dict(os.environ, **{CALIBRATION_ENV: repr(calibrate())})  # the same work in every child
    ratios, times = [], {"on": [], "off": []}
    for number in range(args.rounds):
        order = ("off", "on") if number % 2 == 0 else ("on", "off")
        seconds = {}
        for mode in order:
            done = subprocess.run(
                [sys.executable, __file__, "--child", mode],
                capture_output=True, text=True, check=True, env=env,
            )  # fmt: skip
            report = json.loads(done.stdout)
            seconds[mode] = report["seconds"]
            times[mode].append(report["seconds"])
            if mode == "on":
                assert report["spans"] > 64, report  # run, stage, 64+ chunk spans
        ratios.append(seconds["on"] / seconds["off"])
        print(
            f"round {number + 1}: off {seconds['off']:.3f} s, on {seconds['on']:.3f} s", file=sys.stderr
        )
    for mode in ("off", "on"):
        print(f"{mode:>4}: median {statistics.median(times[mode]):.3f} s "
              f"({min(times[mode]):.3f}-{max(times[mode]):.3f})")  # fmt: skip
    spread = f"({min(ratios):.3f}-{max(ratios):.3f})"
    print(f"on/off: {statistics.median(ratios):.3f} {spread}  [target <= 1.02]")


if __name__ == "__main__":
    main()
