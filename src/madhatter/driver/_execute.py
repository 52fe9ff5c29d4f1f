"""Run a plan: the one entry point of the driver package.

Everything a run starts is stopped when it ends: engines are shut down (cancelling their pending
work if the run failed or was interrupted) before the error or the result is handed back, and the
run's last event says how it ended.
"""

from __future__ import annotations

import itertools
import platform
import reprlib
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import wait
from threading import Event as ThreadingEvent
from typing import Any

from .._errors import RunCancelled, first_line
from .._events import Emitter, Listener, RunFinished, RunStarted
from .._results import RunReport
from .._version import __version__
from ..cache import CacheStore
from ..engines import Engine
from ..graph import Plan
from ..tracing import start_run
from ._chain import release_setups
from ._context import Recorder, RunContext
from ._engines import EngineSet
from ._evaluator import Evaluator


def execute_plan(
    plan: Plan,
    *,
    pipeline: str,
    engine: str | Engine,
    workers: int | None,
    params: Mapping[str, Any],
    listeners: list[Listener],
    cancel: ThreadingEvent | None,
    inline: bool,
    engine_options: Mapping[str, Any],
    cache: CacheStore | None = None,
    capture_output: bool = False,
) -> RunReport:
    """Run ``plan`` and return its report; on any error, stop everything first, then raise."""
    run_id = uuid.uuid4().hex[:12]
    recorder = Recorder()
    emitter = Emitter([recorder, *listeners])
    run = RunContext(run_id, emitter, cancel, recorder)
    engines = EngineSet(engine, workers, engine_options)
    evaluator = Evaluator(
        plan, engines, run, params, inline=inline, cache=cache, capture_output=capture_output
    )
    evaluator.check_shippable()
    steps = tuple(itertools.chain.from_iterable(stage.step_names for stage in plan.stages))
    started = time.perf_counter()
    status, error = "failed", None
    # None: not traced (``madhatter.tracing``)
    evaluator.trace = trace = start_run(pipeline, engines.default_name)
    try:
        evaluator.prepare_engines()
        own = engines.get(None)
        engine_info = (engines.default_name, own.workers, steps, own.dashboard_link)
        run.emit(RunStarted(run_id, pipeline, *engine_info, _edges(plan), _shown(params), _versions()))
        result = evaluator.result()
        status, elapsed = "succeeded", time.perf_counter() - started
    except (KeyboardInterrupt, RunCancelled) as exc:
        status, error = "cancelled", str(exc) or "interrupted"
        raise
    except BaseException as exc:
        error = first_line(exc)
        raise
    finally:
        try:
            # After success, tasks still out are unneeded (a stream consumer stopped early).
            engines.shutdown(cancel_pending=status != "succeeded" or bool(run.in_flight))
        finally:
            if status != "cancelled":  # Ctrl-C must be prompt; else a probe item ends first
                wait(run.driver_threads)
            release_setups(run_id)
            seconds = time.perf_counter() - started
            if trace is not None:
                trace.end(status, error)
            run.emit(RunFinished(run_id, status, seconds, error))
    return run.report(result, elapsed)  # after RunFinished, so the report's events end with it


def _edges(plan: Plan) -> tuple[tuple[str, str], ...]:
    """The graph's ``(upstream, step)`` pairs, for a picture of the run."""
    return tuple(
        (upstream, step.name)
        for stage in plan.stages
        for step in stage.steps
        for upstream in step.upstreams
    )


def _shown(params: Mapping[str, Any]) -> dict[str, str]:
    """The run parameters as text (events carry plain JSON values)."""
    return {name: reprlib.repr(value) for name, value in params.items()}


def _versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "madhatter": __version__,
        "platform": platform.platform(terse=True),
    }
