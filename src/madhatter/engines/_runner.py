"""Drive a :class:`~madhatter.graph.Plan` on engines: the one place where a run happens.

The run is a small dataflow machine in the driver's thread:

* a *driver* stage (a ``@preprocess`` or ``@postprocess`` step) is called once, in the driver, when
  its inputs are complete -- or at once with lazy iterators, for ``stream=True``;
* a *parallel* stage is a :class:`~._stage.StageRunner` that reads its input (a driver value, or
  the output :class:`~._channel.Channel` of the stage before it) and launches chunks on an engine;
* :meth:`Scheduler.drive` pumps every active stage, then waits for the next task to finish, until
  what the caller needs is ready. Nothing is materialised that no step asked to see whole.

Everything a run starts is stopped when it ends: engines are shut down (cancelling their pending
work if the run failed or was interrupted) before the error or the result is handed back.
"""

from __future__ import annotations

import functools
import itertools
import queue
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, wait
from threading import Event as ThreadingEvent
from typing import Any

from .._errors import RunCancelled, RunError, ShippingError, StepFailed
from .._events import (
    Emitter,
    Event,
    Listener,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
)
from .._results import RunReport, SkippedItem, StepStats
from ..graph import Plan, Stage
from ._base import Engine, Remote, TaskResult
from ._chain import (
    ChainOp,
    ChainTask,
    ChunkOutcome,
    preview,
    release_setups,
    user_traceback,
)
from ._channel import Channel
from ._registry import engine_class, get_engine
from ._serialize import dumps_function
from ._stage import ChannelReader, IterableReader, Job, Reader, StageRunner

CANCEL_POLL_SECONDS = 0.1
"""How often a run with a cancel event looks at it while waiting for tasks."""


class EngineSet:
    """The engines of one run, created on first use: the run's own and any a step names."""

    def __init__(self, default: str | Engine, workers: int | None, options: Mapping[str, Any]):
        if not isinstance(default, str) and (options or workers is not None):
            raise TypeError(
                "workers= and engine options configure an engine madhatter creates; give them to "
                "your engine instance's constructor instead"
            )
        self._default = default
        self._workers = workers
        self._options = dict(options)
        self._engines: dict[str, Engine] = {}

    @property
    def default_name(self) -> str:
        return self._default if isinstance(self._default, str) else self._default.name

    def ships_data(self, name: str | None) -> bool:
        if name is None and not isinstance(self._default, str):
            return self._default.traits.ships_data
        return engine_class(name or self.default_name).traits.ships_data

    def get(self, name: str | None) -> Engine:
        key = name or self.default_name
        if key not in self._engines:
            # A step naming the run's own engine gets the run's engine, options and all.
            if key == self.default_name and not isinstance(self._default, str):
                self._engines[key] = self._default
            else:
                options = self._options if key == self.default_name else {}
                self._engines[key] = get_engine(key, workers=self._workers, **options)
        return self._engines[key]

    def workers(self) -> int:
        return self.get(None).workers

    def dashboard_link(self) -> str | None:
        return self.get(None).dashboard_link

    def shutdown(self, *, cancel_pending: bool) -> None:
        """Shut down the engines this run created (an engine instance the caller passed in is
        the caller's to shut down, so it can serve several runs)."""
        errors = []
        for engine in self._engines.values():
            if engine is self._default:
                continue
            try:
                engine.shutdown(cancel_pending=cancel_pending)
            except Exception as exc:  # shut the others down regardless
                errors.append(exc)
        if errors:
            raise errors[0]


class RunContext:
    """The state of one run that stages share: events, statistics, skipped items, in-flight tasks."""

    def __init__(self, run_id: str, emitter: Emitter, cancel: ThreadingEvent | None) -> None:
        self.run_id = run_id
        self.relaxed = False
        self._emitter = emitter
        self._cancel = cancel
        self._skipped: list[SkippedItem] = []
        self._stats: dict[str, StepStats] = {}
        self.driver_threads: list[Future[TaskResult]] = []
        self.completed: queue.SimpleQueue[Future[TaskResult]] = queue.SimpleQueue()
        self.futures: dict[Future[TaskResult], tuple[StageRunner, Job]] = {}

    @property
    def emitting(self) -> bool:
        """Whether anyone listens (hot paths skip building events otherwise)."""
        return bool(self._emitter)

    def emit(self, event: Event) -> None:
        if self._emitter:
            self._emitter.emit(event)

    def skipped(self, outcome: ChunkOutcome) -> None:
        self._skipped.extend(outcome.skipped)

    def stats(self, step: str) -> StepStats:
        return self._stats.setdefault(step, StepStats())

    def track(self, future: Future[TaskResult], runner: StageRunner, job: Job) -> None:
        self.futures[future] = (runner, job)
        future.add_done_callback(self.completed.put)

    def take_completed(self, timeout: float | None, *, block: bool) -> list[Future[TaskResult]]:
        """Futures that finished since the last call; with ``block``, wait up to ``timeout`` for
        the first. O(1) per completion, unlike ``concurrent.futures.wait`` (O(futures) per call,
        which cost W4's 64 threads a fifth of their time)."""
        done: list[Future[TaskResult]] = []
        try:
            if block:
                done.append(self.completed.get(timeout=timeout))
            while True:
                done.append(self.completed.get_nowait())
        except queue.Empty:
            pass
        return done

    def sleep(self, seconds: float) -> None:
        """Wait for a retry's delay, waking up early if the run is cancelled."""
        if self._cancel is not None:
            self._cancel.wait(seconds)
        else:
            time.sleep(seconds)

    def check_cancelled(self) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise RunCancelled("cancel requested")

    @property
    def poll_seconds(self) -> float | None:
        return CANCEL_POLL_SECONDS if self._cancel is not None else None

    def report(self, result: Any, seconds: float) -> RunReport:
        return RunReport(self.run_id, result, tuple(self._skipped), dict(self._stats), seconds)


class _Collector:
    """Drains a reader into a list, for a step that wants its input whole."""

    def __init__(self, reader: ChannelReader) -> None:
        self.reader = reader
        self.items: list[Any] = []

    def pump(self) -> bool:
        if self.reader.exhausted:
            return False
        items = self.reader.read(max(1, self.reader.available()))
        if isinstance(items, Remote):
            raise RuntimeError("madhatter internal error: a driver-side reader got a remote chunk")
        self.items.extend(items)
        return bool(items)

    @property
    def done(self) -> bool:
        return self.reader.exhausted


class Scheduler:
    """Evaluates a plan's stages on demand and pumps the active ones until a condition holds."""

    def __init__(
        self,
        plan: Plan,
        engines: EngineSet,
        run: RunContext,
        params: Mapping[str, Any],
        *,
        inline: bool,
    ) -> None:
        self.plan, self.engines, self.run, self.params = plan, engines, run, params
        self.inline = inline
        self.runners: dict[str, StageRunner] = {}
        self.channels: dict[str, Channel] = {}
        self.values: dict[str, Any] = {}
        self.collectors: list[_Collector] = []
        self._inputs: dict[str, list[Callable[[], Any]]] = {}

    # -- the run's result ------------------------------------------------------------------

    def result(self) -> Any:
        output = self.plan.stage(self.plan.output)
        if output.kind == "driver":
            value = self.evaluate(output)
            # A lazy result would be read after the run has stopped its engines: read it now.
            return list(value) if _is_one_shot(value) else value
        collector = _Collector(self._channel_reader(output))
        self.collectors.append(collector)
        self.drive(lambda: collector.done)
        return collector.items

    # -- driver stages ---------------------------------------------------------------------

    def evaluate(self, stage: Stage) -> Any:
        """The value of a driver stage, computing it (and what it needs) on first use."""
        if stage.name in self.values:
            return self.values[stage.name]
        self._activate(stage)
        getters = self._inputs.pop(stage.name)
        step = stage.first
        arguments = [getter() for getter in getters]  # waits for whole inputs; streams are lazy
        total = sum(len(a) for a in arguments if isinstance(a, list)) if arguments else None
        self.run.emit(StepStarted(self.run.run_id, step.name, total))
        clock = time.perf_counter()
        try:
            value = step.func(*arguments, **self._params_of(stage))
        except RunError:
            raise  # an upstream's failure, met while this step read its stream: not this step's
        except Exception as exc:
            raise StepFailed(step.name, 0, preview(arguments), user_traceback(exc)) from exc
        if _is_one_shot(value) and len(self.plan.consumers(stage.name)) > 1:
            value = list(value)  # several consumers: a generator can only be read once
        seconds = time.perf_counter() - clock
        stats = self.run.stats(step.name)
        stats.seconds, stats.chunks = seconds, 1
        stats.items_in = sum(len(a) for a in arguments if isinstance(a, list))
        stats.items_out = len(value) if isinstance(value, list) else 0
        self.run.emit(StepFinished(self.run.run_id, step.name, stats.items_in, stats.items_out, seconds))
        self.values[stage.name] = value
        return value

    def _activate(self, stage: Stage) -> None:
        """Start everything ``stage`` needs, without running any driver function yet.

        Parallel upstreams start running now, so sibling branches progress together while the
        driver waits for the first of them.
        """
        if stage.name in self._inputs or stage.name in self.values:
            return
        getters: list[Callable[[], Any]] = []
        for upstream_name in stage.upstreams:
            upstream = self.plan.stage(upstream_name)
            if upstream.kind == "driver":
                self._activate(upstream)
                if stage.first.stream:
                    getters.append(functools.partial(self.evaluate, upstream))
                else:
                    getters.append(functools.partial(self._whole, upstream))
            elif stage.first.stream:
                reader = self._channel_reader(upstream)
                getters.append(functools.partial(self._stream, reader))
            else:
                collector = _Collector(self._channel_reader(upstream))
                self.collectors.append(collector)
                getters.append(functools.partial(self._collected, collector))
        self._inputs[stage.name] = getters

    def _whole(self, stage: Stage) -> Any:
        """A driver stage's value for a step that wants it whole: a generator becomes a list."""
        value = self.evaluate(stage)
        if _is_one_shot(value):
            value = self.values[stage.name] = list(value)
        return value

    def _collected(self, collector: _Collector) -> list[Any]:
        self.drive(lambda: collector.done)
        self.collectors.remove(collector)
        return collector.items

    def _stream(self, reader: ChannelReader) -> Iterator[Any]:
        """The items of ``reader``, lazily, driving the run whenever the next chunk is not ready.

        Chained at C level (``chain.from_iterable`` over whole chunks): a per-item generator
        step would cost a third of a cheap step's time (W5 of the benchmarks).
        """
        return itertools.chain.from_iterable(self._stream_chunks(reader))

    def _stream_chunks(self, reader: ChannelReader) -> Iterator[list[Any]]:
        while True:
            chunk = reader.read_chunk()
            if chunk is not None:
                yield chunk
            elif reader.exhausted:
                return
            else:
                self.drive(lambda: reader.available() > 0 or reader.exhausted)

    def _params_of(self, stage: Stage) -> dict[str, Any]:
        step = stage.first
        return {name: self.params[name] for name in step.param_names if name in self.params}

    # -- parallel stages -------------------------------------------------------------------

    def _channel_reader(self, stage: Stage) -> ChannelReader:
        self._runner(stage)
        return ChannelReader(self.channels[stage.name])

    def _runner(self, stage: Stage) -> StageRunner:
        if stage.name in self.runners:
            return self.runners[stage.name]
        readers = len(self.plan.consumers(stage.name)) + (stage.name == self.plan.output)
        output = self.channels[stage.name] = Channel(readers)
        upstream = self.plan.stage(stage.upstreams[0])
        reader: Reader
        engine = self.engines.get(stage.first.engine)
        upstream_remote = False
        if upstream.kind == "driver":
            value = self.evaluate(upstream)
            if not _is_iterable(value):
                raise RunError(
                    f"step {upstream.first.name!r} returned {type(value).__name__}, which is not "
                    f"iterable, but parallel step {stage.first.name!r} needs a sequence to split"
                )
            reader = IterableReader(value, upstream.first.name)
        else:
            reader = self._channel_reader(upstream)
            upstream_remote = self.runners[upstream.name].keep_output
        runner = StageRunner(
            stage,
            self._task(stage),
            reader,
            output,
            engine,
            self.run,
            inline_allowed=(
                self.inline
                and not engine.traits.own_environment
                and _may_run_inline(stage)
                and not upstream_remote
            ),
            keep_output=self._keeps_output(stage, engine),
        )
        self.runners[stage.name] = runner
        return runner

    def _keeps_output(self, stage: Stage, engine: Engine) -> bool:
        """Whether ``stage``'s output can stay on ``engine``'s cluster: the engine can keep
        results, and only parallel stages on that same engine read them."""
        consumers = self.plan.consumers(stage.name)
        return (
            engine.traits.keeps_output
            and stage.name != self.plan.output
            and bool(consumers)
            and all(
                c.kind == "parallel" and self.engines.get(c.first.engine) is engine for c in consumers
            )
        )

    def _task(self, stage: Stage) -> ChainTask:
        ops = tuple(
            ChainOp(
                step=step.name,
                kind=step.kind,
                func=step.func,
                params=tuple(
                    (name, self.params[name]) for name in step.param_names if name in self.params
                ),
                setup=step.setup,
                on_error=step.on_error,
            )
            for step in stage.steps
        )
        return ChainTask(self.run.run_id, ops, stage.first.timeout)

    def check_shippable(self) -> None:
        """Fail before any work if a step bound for a process boundary cannot be pickled."""
        for stage in self.plan.stages:
            if stage.kind != "parallel" or not self.engines.ships_data(stage.first.engine):
                continue
            engine_name = stage.first.engine or self.engines.default_name
            for op in self._task(stage).ops:
                for what, value in (
                    ("function", op.func),
                    ("setup", op.setup),
                    ("params", op.params),
                ):
                    try:
                        dumps_function(value)
                    except Exception as exc:
                        reason = f"its {what} cannot be pickled ({type(exc).__name__}: {exc})"
                        raise ShippingError(op.step, reason, engine_name) from exc

    def prepare_engines(self) -> None:
        """Let each parallel stage's engine check, before any work, that it can serve the stage
        (a container engine checks the step's image, for one)."""
        for stage in self.plan.stages:
            if stage.kind == "parallel":
                self.engines.get(stage.first.engine).prepare(dict(stage.first.resources))

    # -- the loop --------------------------------------------------------------------------

    def drive(self, until: Callable[[], bool]) -> None:
        """Pump every active stage and wait for tasks until ``until()`` holds."""
        run = self.run
        while True:
            run.check_cancelled()
            progressed = False
            for runner in list(self.runners.values()):
                progressed = runner.pump() or progressed
            for collector in self.collectors:
                progressed = collector.pump() or progressed
            if until():
                return
            if not run.futures:
                if progressed:
                    continue
                due = [d for r in self.runners.values() if (d := r.next_retry_due()) is not None]
                if due:
                    run.sleep(max(0.0, min(due) - time.monotonic()))
                    continue
                if not run.relaxed:
                    run.relaxed = True  # every producer waits on a full buffer: let them grow
                    continue
                raise RuntimeError("madhatter internal error: the run stalled with no work to do")
            for future in run.take_completed(self._wait_seconds(), block=not progressed):
                runner, job = run.futures.pop(future)
                runner.on_done(future, job)

    def _wait_seconds(self) -> float | None:
        candidates = [d - time.monotonic() for r in self.runners.values() if (d := r.next_retry_due())]
        if self.run.poll_seconds is not None:
            candidates.append(self.run.poll_seconds)
        return max(0.0, min(candidates)) if candidates else None


def _is_iterable(value: object) -> bool:
    try:
        iter(value)  # type: ignore[call-overload]
    except TypeError:
        return False
    return not isinstance(value, (str, bytes, dict))


def _is_one_shot(value: object) -> bool:
    return isinstance(value, Iterator)


def _may_run_inline(stage: Stage) -> bool:
    """Steps that asked for isolation, limits or their own engine always go to workers."""
    step = stage.first
    return not (
        step.retries  # a step expected to fail is kept where a crash costs only a worker
        or step.timeout is not None
        or step.engine is not None
        or step.resources
        or any(s.setup is not None for s in stage.steps)
    )


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
) -> RunReport:
    """Run ``plan`` and return its report; on any error, stop everything first, then raise."""
    run_id = uuid.uuid4().hex[:12]
    emitter = Emitter(listeners)
    run = RunContext(run_id, emitter, cancel)
    engines = EngineSet(engine, workers, engine_options)
    scheduler = Scheduler(plan, engines, run, params, inline=inline)
    scheduler.check_shippable()
    steps = tuple(itertools.chain.from_iterable(stage.step_names for stage in plan.stages))
    started = time.perf_counter()
    status, error = "failed", None
    try:
        scheduler.prepare_engines()
        engine_info = (engines.default_name, engines.workers(), steps, engines.dashboard_link())
        run.emit(RunStarted(run_id, pipeline, *engine_info))
        result = scheduler.result()
        status = "succeeded"
        return run.report(result, time.perf_counter() - started)
    except (KeyboardInterrupt, RunCancelled) as exc:
        status, error = "cancelled", str(exc) or "interrupted"
        raise
    except BaseException as exc:
        error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise
    finally:
        try:
            # After success, tasks still out are unneeded (a stream consumer stopped early).
            engines.shutdown(cancel_pending=status != "succeeded" or bool(run.futures))
        finally:
            if status != "cancelled":  # Ctrl-C must be prompt; else a probe item ends first
                wait(run.driver_threads)
            release_setups(run_id)
            seconds = time.perf_counter() - started
            run.emit(RunFinished(run_id, status, seconds, error))
