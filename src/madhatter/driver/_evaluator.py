"""Evaluate a :class:`~madhatter.graph.Plan` in the driver: the dataflow machine of one run.

* a *driver* stage (a ``@preprocess`` or ``@postprocess`` step) is called once, in the driver, when
  its inputs are complete -- or at once with lazy iterators, for ``stream=True``;
* a *parallel* stage is a :class:`~._stage.StageRunner` that reads its input (a driver value, or
  the output :class:`~._channel.Channel` of the stage before it) and launches chunks on an engine;
* :meth:`Evaluator.drive` pumps every active stage, then hands finished tasks to the stages that
  launched them, until what the caller needs is ready. Nothing is materialised that no step asked
  to see whole.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .._errors import EngineError, RunError, ShippingError, StepFailed
from .._events import StepFinished, StepStarted
from ..cache import CacheStore
from ..cache._fingerprint import Fingerprint
from ..cache._keys import lineage
from ..engines import Engine, EngineTraits
from ..engines._serialize import dumps_function
from ..graph import Plan, Stage
from ._capture import CHUNK_OUTPUT_BYTES, driver_levels
from ._chain import ChainCache, ChainOp, ChainTask, preview, user_traceback
from ._channel import Channel
from ._context import RunContext
from ._engines import EngineSet
from ._readers import ChannelReader, Collector, IterableReader, Reader
from ._stage import StageRunner
from ._stage_cache import CachedReader, StageCache, described, step_fingerprint

if TYPE_CHECKING:
    from ..tracing import RunTrace, StageTrace


class Evaluator:
    """Evaluates a plan's stages on demand, driving parallel ones until what is asked is ready."""

    def __init__(
        self,
        plan: Plan,
        engines: EngineSet,
        run: RunContext,
        params: Mapping[str, Any],
        *,
        inline: bool,
        cache: CacheStore | None = None,
        capture_output: bool = False,
    ) -> None:
        self.plan, self.engines, self.run, self.params = plan, engines, run, params
        self.trace: RunTrace | None = None  # the run's spans, when it is traced (``madhatter.tracing``)
        self.inline = inline
        self.cache = cache
        self.capture = CHUNK_OUTPUT_BYTES if capture_output else 0
        self.runners: dict[str, StageRunner] = {}
        self.channels: dict[str, Channel] = {}
        self.values: dict[str, Any] = {}
        self.collectors: list[Collector] = []
        self._inputs: dict[str, list[Callable[[], Any]]] = {}
        self._traits: dict[str, EngineTraits] = {}
        self._fingerprints: dict[str, tuple[str | None, ...]] = {}

    # -- the run's result ------------------------------------------------------------------

    def result(self) -> Any:
        output = self.plan.stage(self.plan.output)
        if output.kind == "driver":
            value = self.evaluate(output)
            # A lazy result would be read after the run has stopped its engines: read it now.
            return list(value) if _is_one_shot(value) else value
        collector = Collector(self._channel_reader(output))
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
        traced = self.trace.driver_step(step.name) if self.trace else contextlib.nullcontext()
        try:
            with traced:
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
                collector = Collector(self._channel_reader(upstream))
                self.collectors.append(collector)
                getters.append(functools.partial(self._collected, collector))
        self._inputs[stage.name] = getters

    def _whole(self, stage: Stage) -> Any:
        """A driver stage's value for a step that wants it whole: a generator becomes a list."""
        value = self.evaluate(stage)
        if _is_one_shot(value):
            value = self.values[stage.name] = list(value)
        return value

    def _collected(self, collector: Collector) -> list[Any]:
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
        trace = None
        if self.trace is not None:
            trace = self.trace.stage(stage.name, stage.step_names, engine.name)
        task = self._task(stage, trace)
        cache = None
        if self.cache is not None and task.cache is not None:
            cache = StageCache(self.cache, task.ops, task.cache.fingerprints)
            if not cache.empty:  # cut chunks by what the cache holds
                reader = CachedReader(reader, cache)
        runner = StageRunner(
            stage,
            task,
            reader,
            output,
            engine,
            self._traits[stage.name],
            self.run,
            inline_allowed=(
                self.inline
                and not self._traits[stage.name].own_environment
                and _may_run_inline(stage)
                and not upstream_remote
            ),
            keep_output=self._keeps_output(stage, engine),
            cache=cache,
            trace=trace,
        )
        self.runners[stage.name] = runner
        return runner

    def _keeps_output(self, stage: Stage, engine: Engine) -> bool:
        """Whether ``stage``'s output can stay on ``engine``'s cluster: the engine can keep
        results, and only parallel stages on that same engine read them."""
        consumers = self.plan.consumers(stage.name)
        return (
            self.cache is None  # cached outputs are merged in the driver
            and self._traits[stage.name].keeps_output
            and stage.name != self.plan.output
            and bool(consumers)
            and all(
                c.kind == "parallel" and self.engines.get(c.first.engine) is engine for c in consumers
            )
        )

    def _task(self, stage: Stage, trace: StageTrace | None = None) -> ChainTask:
        ops = self._ops(stage)
        cache = self._chain_cache(stage, ops)
        levels = driver_levels() if self.capture else ()
        carrier = trace.carrier if trace is not None else ()
        return ChainTask(self.run.run_id, ops, stage.first.timeout, cache, self.capture, levels, carrier)

    def _ops(self, stage: Stage) -> tuple[ChainOp, ...]:
        return tuple(
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

    def _chain_cache(self, stage: Stage, ops: tuple[ChainOp, ...]) -> ChainCache | None:
        """The stage's steps' fingerprints, computed once per run (``None``: nothing is cached).
        A step with ``cache=False`` and every step after it in the stage are not cached: their
        outputs depend on its, which may differ from run to run."""
        if self.cache is None:
            return None
        if stage.name not in self._fingerprints:
            own: list[Fingerprint | None] = []
            for step, op in zip(stage.steps, ops, strict=True):
                cached = step.cache and not (own and own[-1] is None)
                own.append(step_fingerprint(step, dict(op.params)) if cached else None)
            digests = tuple(f.digest if f is not None else None for f in own)
            for step, fingerprint, chained in zip(stage.steps, own, lineage(digests), strict=True):
                if fingerprint is not None and chained is not None:
                    self.cache.remember(step.name, chained, described(fingerprint))
            self._fingerprints[stage.name] = digests
        found = self._fingerprints[stage.name]
        if found[0] is None:
            return None
        # containers do not see the driver's folders: the driver writes what they made
        store = None if self._traits[stage.name].own_environment else self.cache
        return ChainCache(found, store)

    def check_shippable(self) -> None:
        """Fail before any work if a step bound for a process boundary cannot be pickled."""
        for stage in self.plan.stages:
            if stage.kind != "parallel" or not self.engines.traits(stage.first.engine).ships_data:
                continue
            engine_name = stage.first.engine or self.engines.default_name
            for op in self._ops(stage):
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
        (a container engine checks the step's image, for one), and say its traits for it."""
        for stage in self.plan.stages:
            if stage.kind == "parallel":
                engine = self.engines.get(stage.first.engine)
                traits = engine.prepare(dict(stage.first.resources))
                if not isinstance(traits, EngineTraits):
                    raise EngineError(
                        f"the {engine.name!r} engine's prepare() returned {traits!r}, not the "
                        f"stage's EngineTraits (return self.traits when they do not depend on the "
                        f"resources; see docs/engines.md)"
                    )
                self._traits[stage.name] = traits

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
            if progressed:
                run.stall = 0  # the stall is over: back-pressure holds again
            if until():
                return
            if not run.in_flight:
                if progressed:
                    continue
                due = [d for r in self.runners.values() if (d := r.next_retry_due()) is not None]
                if due:
                    run.sleep(max(0.0, min(due) - time.monotonic()))
                    continue
                if run.stall < 2:
                    # Every producer waits on a full buffer (a step reads one branch whole
                    # before another): let those a consumer waits on grow for one round, else
                    # every one -- and only while stalled, so the memory bound holds after.
                    run.stall += 1
                    continue
                raise RuntimeError("madhatter internal error: the run stalled with no work to do")
            run.dispatch_completed(self._wait_seconds(), block=not progressed)

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
        # a step that skips failures must survive a crash too: a worker's, not the driver's
        or any(s.on_error == "skip" for s in stage.steps)
    )
