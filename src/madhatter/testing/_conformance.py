"""The engine conformance suite: one test class that any engine must pass, shipped for engine authors.

Subclass :class:`EngineConformance` in a test module (the class itself is not collected: pytest
collects only classes named ``Test*``), set ``engine`` to the name the engine is registered under,
and override the ``engine_options`` fixture if it needs options (a cluster address, an image)::

    class TestMyEngine(EngineConformance):
        engine = "mine"

        @pytest.fixture
        def engine_options(self, my_cluster) -> dict[str, Any]:
            return {"address": my_cluster.address}

Every run creates its engine by name, as ``madhatter run --engine NAME`` would, so the registry
(or the entry point) is tested too, and the run shuts the engine down: after a failure, that
shutdown is what must leave nothing running. Every chunk is sent to the engine (``inline=False``).

The suite asks little of the engine: its workers import madhatter (the suite's pipelines are in
:mod:`._pipelines`) and see ``tmp_path`` at the same path. The flaky-step tests keep a marker file
there, which the rerun of the failing task finds. When the runner retries, the suite leaves the
marker on the ``ChunkRetried`` event, so workers that may only read ``tmp_path`` pass; an engine
that retries tasks itself (``traits.retries``) sends no such event, so only the failing call on
the worker can leave the marker: that engine's workers must be able to write in ``tmp_path``.

Engines with the optional capabilities (``traits.retries``, ``traits.keeps_output``) are held to
them; engines without are held to the runner's way. The traits the suite goes by are the ones the
runner went by: what the engine's ``prepare({})`` returned for the stages of the test's run (the
suite's steps request no resources), seen by wrapping the class's ``prepare`` during the suite's
own runs. Each test is a run or two of a few dozen items: well under a second on a local engine.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import pathlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import pytest

from .. import (
    Pipeline,
    RunCancelled,
    RunReport,
    SkippedItemsWarning,
    StepFailed,
    TaskTimeout,
    run,
)
from ..engines import Engine, EngineTraits, engine_class
from ..events import (
    ChunkDone,
    ChunkRetried,
    Event,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
)
from . import RecordingListener
from . import _pipelines as p
from ._tracing import in_memory_spans


def _wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds; False if ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _run_threads() -> list[str]:
    """Names of madhatter's own threads (the driver's and the built-in engines') still alive."""
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("madhatter")]


class EngineConformance:
    """What every engine must do, as pytest tests: subclass it and set ``engine``."""

    engine: ClassVar[str]
    """The name the engine is registered under (built in, by entry point or ``register_engine``)."""

    workers: ClassVar[int] = 2
    """The ``workers=`` of every run (ignored by engines that connect to a cluster of given size)."""

    _options: dict[str, Any]
    _prepared: list[EngineTraits]

    @pytest.fixture
    def engine_options(self) -> dict[str, Any]:
        """Options for the engine's constructor; override it to point at a test cluster."""
        return {}

    @pytest.fixture(autouse=True)
    def _use_engine_options(self, engine_options: dict[str, Any]) -> None:
        self._options = {"workers": self.workers, **engine_options}

    # -- helpers -------------------------------------------------------------------------------

    @property
    def traits(self) -> EngineTraits:
        """The traits the runner went by in this test's latest run: what the engine's
        ``prepare({})`` returned for its stages (the same for each: they request no resources)."""
        prepared: list[EngineTraits] = getattr(self, "_prepared", [])
        assert prepared, "the engine prepared no stage: traits are known once a run has started"
        assert all(traits == prepared[0] for traits in prepared), (
            f"the engine's prepare({{}}) returned different traits for stages of one run: {prepared}"
        )
        return prepared[0]

    @contextlib.contextmanager
    def _recording_traits(self) -> Iterator[None]:
        """Keep what the engine's ``prepare`` returns for each stage of the run inside the block
        (in ``_prepared``): its class's ``prepare`` is wrapped for that long, then put back."""
        cls = engine_class(self.engine)
        own = cls.__dict__.get("prepare")  # None: inherited
        original = inspect.getattr_static(cls, "prepare")
        self._prepared = prepared = []

        def prepare(engine: Engine, resources: Mapping[str, Any]) -> EngineTraits:
            traits: EngineTraits = original.__get__(engine, type(engine))(resources)
            prepared.append(traits)
            return traits

        setattr(cls, "prepare", prepare)  # noqa: B010 (mypy refuses to assign a method)
        try:
            yield
        finally:
            if own is None:
                del cls.prepare
            else:
                setattr(cls, "prepare", own)  # noqa: B010

    def run(self, target: Any, **options: Any) -> Any:
        """``madhatter.run`` on the engine under test, every chunk sent to it."""
        with self._recording_traits():
            return run(target, engine=self.engine, inline=False, **self._options, **options)

    def execute(self, step: Any, **options: Any) -> RunReport:
        """``Pipeline.execute`` (the whole report) of the pipeline ending in ``step``."""
        pipeline = Pipeline([step])
        with self._recording_traits():
            return pipeline.execute(engine=self.engine, inline=False, **self._options, **options)

    def run_matches_serial(self, target: Any, **options: Any) -> Any:
        """The run's result, checked against the serial engine's, the reference."""
        result = self.run(target, **options)
        assert result == run(target, engine="serial", **options)
        return result

    # -- results: the same as serial -----------------------------------------------------------

    def test_fan_out_and_fan_in(self) -> None:
        result = self.run_matches_serial(p.gathered)
        assert result == {
            "pairs": [(3 * x, 3 * x + 1) for x in range(p.SIZE)],
            "odd": list(range(1, p.SIZE, 2)),
            "count": p.SIZE,
        }

    def test_one_output_read_by_two_steps(self) -> None:
        assert self.run_matches_serial(p.diamond) == [1] * p.SIZE

    def test_a_generator_source(self) -> None:
        assert self.run_matches_serial(p.squared) == [x * x for x in range(30)]

    def test_a_generator_source_read_by_two_steps(self) -> None:
        result = self.run_matches_serial(p.both_branches)
        assert result == ([x * x for x in range(30)], list(range(0, 30, 3)))

    def test_ordered_output_keeps_input_order_and_every_chunk_runs_on_the_engine(self) -> None:
        listener = RecordingListener()
        assert self.run(p.in_order, listeners=[listener]) == [x * 7 for x in range(p.SIZE)]
        done: list[Any] = listener.of_type(ChunkDone)
        assert sorted(event.chunk for event in done) == list(range(p.SIZE // 2))
        assert "driver" not in {event.worker for event in done}

    def test_unordered_output_has_the_same_items(self) -> None:
        result = self.run(p.any_order)
        assert sorted(result) == [x * 7 for x in range(p.SIZE)]

    @pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
    def test_a_chain_of_parallel_steps(self, fuse: bool) -> None:
        stages = [stage.step_names for stage in Pipeline([p.labelled]).plan(fuse=fuse).stages]
        assert len(stages) == (2 if fuse else 4)  # one task per chunk for the chain, or one each
        listener = RecordingListener()
        report = self.execute(p.labelled, fuse=fuse, listeners=[listener])
        assert report.result == [f"v{x / 2}" for x in range(p.SIZE) if x % 7 != 0]
        done: list[Any] = listener.of_type(ChunkDone)
        for step, items in (("not_seven", p.SIZE), ("halved", 34), ("labelled", 34)):
            assert sum(e.items_in for e in done if e.step == step) == items
            assert report.steps[step].items_in == items

    def test_run_parameters_reach_the_steps(self) -> None:
        params = {"stop": "4", "factor": "10", "label": "n"}
        assert self.run_matches_serial(p.scaled, params=params) == ["n0", "n10", "n20", "n30"]

    def test_output_between_stages_stays_on_a_cluster_that_keeps_it(self) -> None:
        """With ``traits.keeps_output`` the items ``wrap`` makes go from worker to worker, never
        through the driver; without it they come back (pickled, if the engine ships data)."""
        before = p.Tracked.unpickled
        assert self.run(p.unwrap) == [2 * x for x in range(p.SIZE)]
        brought_back = p.Tracked.unpickled > before
        assert brought_back == (self.traits.ships_data and not self.traits.keeps_output)

    def test_an_endless_source_streams_in_bounded_memory(self) -> None:
        listener = RecordingListener()
        p.Pulled.count = 0
        result = self.run(p.first_few, listeners=[listener])
        assert result == [3 * x for x in range(p.STREAM_TAKEN)]
        (started,) = listener.of_type(RunStarted)
        slots = started.workers * self.traits.tasks_per_worker  # type: ignore[attr-defined]
        # A few chunks in flight and finished ahead per slot: dozens of chunks, not the stream.
        assert p.Pulled.count <= p.STREAM_TAKEN + 4 * p.STREAM_CHUNK * (slots + 1)

    # -- failures ------------------------------------------------------------------------------

    def test_a_step_error_names_the_step_chunk_and_traceback(self) -> None:
        with pytest.raises(StepFailed) as caught:
            self.run(p.boom)
        error = caught.value
        assert (error.step, error.chunk, error.preview) == ("boom", 2, "[6, 7, 8]")
        assert (error.item, error.item_preview) == (1, "7")  # the item that raised
        message = "'item 7' does not appear to be an IPv4 or IPv6 address"
        assert f"ValueError: {message}" in error.remote_traceback
        assert ", in ip_address" in error.remote_traceback  # a frame of the worker's own
        assert type(error.__cause__) is ValueError  # the user's own exception, unwrapped
        assert str(error.__cause__) == message

    def test_a_failing_generator_source_names_the_source(self) -> None:
        with pytest.raises(StepFailed, match="step 'drying_source' failed") as caught:
            self.run(p.passthrough)
        assert isinstance(caught.value.__cause__, LookupError)
        assert "the source ran dry" in caught.value.remote_traceback

    def test_skip_collects_exactly_the_failing_items(self) -> None:
        report = self.execute(p.fragile)
        assert report.result == [x * 10 for x in range(p.SIZE) if x % 5 != 3]
        assert sorted(item.item for item in report.skipped) == list(range(3, p.SIZE, 5))
        for item in report.skipped:
            assert (item.step, item.chunk) == ("fragile", item.item // 4)
            assert item.error == f"ValueError: bad item {item.item}"
            assert item.traceback.rstrip().endswith(item.error)

    def test_skip_in_a_chunk_step_after_a_map_step(self) -> None:
        report = self.execute(p.fragile_chunks)
        assert report.result == [x * 10 + 1 for x in range(p.SIZE) if x % 5 != 3 and x != 6]
        skipped = sorted((item.step, item.item) for item in report.skipped)
        assert skipped == [("fragile", x) for x in range(3, p.SIZE, 5)] + [("fragile_chunks", 60)]

    def test_run_warns_about_skipped_items(self) -> None:
        with pytest.warns(SkippedItemsWarning, match=r"8 item\(s\) failed and were skipped"):
            result = self.run(p.fragile)
        assert result == [x * 10 for x in range(p.SIZE) if x % 5 != 3]

    def test_retries_recover_a_flaky_step(self, tmp_path: pathlib.Path) -> None:
        """The engine reruns the chunk itself (``traits.retries``), or the runner does and says
        so with a ``ChunkRetried`` event carrying the user's error.

        The rerun passes once a marker file exists in ``tmp_path``: the listener here leaves it
        on ``ChunkRetried``; with an engine's own retries nothing tells the driver, so the
        failing call leaves it, and the engine's workers must be able to write there."""
        marker = tmp_path / "failed-once"

        def leave_marker(event: Event) -> None:
            if isinstance(event, ChunkRetried):
                marker.touch()

        listener = RecordingListener()
        try:
            result = self.run(
                p.flaky_with_a_retry, params={"marker": str(marker)}, listeners=[leave_marker, listener]
            )
        except StepFailed:
            if self.traits.retries and not marker.exists():
                pytest.fail(
                    "the engine retries tasks itself (traits.retries), and its rerun failed as the "
                    f"first call did: that call could not leave its marker {marker}. Such an "
                    "engine's workers must be able to write in tmp_path (mount it read-write)",
                    pytrace=False,
                )
            raise
        assert result == [x + 100 for x in range(p.SIZE)]
        retried: list[Any] = listener.of_type(ChunkRetried)
        if self.traits.retries:
            assert retried == []
        else:
            [event] = retried
            assert (event.step, event.chunk, event.attempt) == ("flaky_with_a_retry", 5, 1)
            assert "ConnectionError: flaky on 21" in event.error

    def test_without_retries_a_flaky_step_fails_the_run(self, tmp_path: pathlib.Path) -> None:
        with pytest.raises(StepFailed, match="step 'flaky' failed on chunk 5") as caught:
            self.run(p.flaky, params={"marker": str(tmp_path / "failed-once")})
        assert isinstance(caught.value.__cause__, ConnectionError)

    def test_a_timeout_fails_the_run_naming_the_step(self) -> None:
        listener = RecordingListener()
        with pytest.raises(TaskTimeout, match="step 'sleepy' chunk 2 ran longer") as caught:
            self.run(p.sleepy, listeners=[listener])
        assert (caught.value.step, caught.value.chunk, caught.value.timeout) == ("sleepy", 2, 0.5)
        assert [e.status for e in listener.of_type(RunFinished)] == ["failed"]  # type: ignore[attr-defined]

    # -- nothing keeps running -----------------------------------------------------------------

    def test_a_failed_run_leaves_nothing_running(self) -> None:
        """When ``run()`` raises, no call of the run's steps is still going on in this process,
        and no thread of madhatter's is left."""
        assert _wait_until(lambda: not p.RUNNING), "a call leaked from an earlier test"
        with pytest.raises(StepFailed, match="step 'slow_first_then_fail' failed on chunk 3"):
            self.run(p.slow_first_then_fail)
        assert not p.RUNNING
        assert _run_threads() == []

    def test_cancelling_a_run_stops_it(self) -> None:
        """Cancelled after its first chunk, a run stops with chunks left undone. The input is
        sized when the run starts, from its width: four times the chunks the runner keeps out
        (the workers ``RunStarted`` reports times ``tasks_per_worker``), twelve at least, so the
        chunks an engine of any width had under way at the cancel cannot be all of them."""
        cancel = threading.Event()
        listener = RecordingListener()

        def size_the_input_then_cancel_after_the_first_chunk(event: Event) -> None:
            if isinstance(event, RunStarted):
                slots = event.workers * max(traits.tasks_per_worker for traits in self._prepared)
                p.Dawdling.items = max(12, 4 * slots)
            elif isinstance(event, ChunkDone):
                cancel.set()

        listeners = [size_the_input_then_cancel_after_the_first_chunk, listener]
        try:
            with pytest.raises(RunCancelled, match="run cancelled"):
                self.run(p.dawdle, cancel=cancel, listeners=listeners)
            items = p.Dawdling.items
        finally:
            p.Dawdling.items = 12
        (started,) = listener.of_type(RunStarted)
        assert items == max(12, 4 * started.workers * self.traits.tasks_per_worker)  # type: ignore[attr-defined]
        assert 0 < len(listener.of_type(ChunkDone)) < items
        assert [e.status for e in listener.of_type(RunFinished)] == ["cancelled"]  # type: ignore[attr-defined]
        assert _run_threads() == []

    def test_no_thread_of_the_run_remains_after_success(self) -> None:
        assert self.run(p.in_order) == [x * 7 for x in range(p.SIZE)]
        assert _wait_until(lambda: not _run_threads()), _run_threads()

    # -- events --------------------------------------------------------------------------------

    def test_events_tell_the_run_in_order(self) -> None:
        listener = RecordingListener()
        report = self.execute(p.labelled, fuse=False, listeners=[listener])
        events: list[Any] = listener.events
        steps = ["numbers", "not_seven", "halved", "labelled"]
        assert isinstance(events[0], RunStarted)
        assert (events[0].engine, list(events[0].steps)) == (self.engine, steps)
        assert events[0].workers >= 1
        assert isinstance(events[-1], RunFinished)
        assert (events[-1].status, events[-1].error) == ("succeeded", None)
        assert {event.run_id for event in events} == {report.run_id}
        assert all(a.at <= b.at for a, b in itertools.pairwise(events))
        position = {id(event): k for k, event in enumerate(events)}
        started: list[Any] = listener.of_type(StepStarted)
        finished: list[Any] = listener.of_type(StepFinished)
        done: list[Any] = listener.of_type(ChunkDone)
        for step in steps:
            [start] = [e for e in started if e.step == step]
            [finish] = [e for e in finished if e.step == step]
            chunks = [e for e in done if e.step == step]
            assert all(position[id(start)] < position[id(c)] < position[id(finish)] for c in chunks)
            if step != "numbers":  # a parallel step: its chunks add up to its input
                assert sum(c.items_in for c in chunks) == finish.items_in == report.steps[step].items_in
                assert all(c.worker and c.seconds >= 0 for c in chunks)

    # -- tracing -------------------------------------------------------------------------------

    def test_spans_nest_run_steps_chunks_and_the_users_own(self) -> None:
        """With OpenTelemetry's SDK and an in-memory exporter, a run is one trace: the run's span
        at its root; under it a span per stage and per driver step; under the stage a span per
        chunk attempt, made where the chunk ran; under each chunk the spans the step's own code
        opened. The engine's workers need ``opentelemetry-api`` and ``-sdk`` (``madhatter[otel]``;
        a container's image too)."""
        pytest.importorskip(
            "opentelemetry.sdk", reason="the span tree needs madhatter[otel] and opentelemetry-sdk"
        )
        with in_memory_spans() as exporter:
            result = self.run(p.traced_total)
            finished = exporter.get_finished_spans()
        assert result == sum(2 * x + 1 for x in range(p.SIZE))
        assert len({span.context.trace_id for span in finished if span.context}) == 1
        names = {span.context.span_id: span.name for span in finished if span.context}
        named: dict[str, list[Any]] = {}
        for span in finished:
            named.setdefault(span.name, []).append(span)
            assert span.end_time is not None
            if span.parent is not None:
                assert span.parent.span_id in names, f"{span.name}: its parent was not exported"

        def parent(span: Any) -> str | None:
            return None if span.parent is None else names[span.parent.span_id]

        [root] = named["madhatter run traced_total"]
        assert parent(root) is None
        assert root.attributes["madhatter.engine"] == self.engine
        stage = "traced_doubled+traced_incremented"
        [step] = named[f"madhatter step {stage}"]
        assert parent(step) == root.name
        assert step.attributes["madhatter.steps"] == ("traced_doubled", "traced_incremented")
        for driver_step in ("numbers", "traced_total"):
            [span] = named[f"madhatter step {driver_step}"]
            assert parent(span) == root.name
        chunks = named[f"madhatter chunk {stage}"]
        assert {parent(chunk) for chunk in chunks} == {step.name}
        attributes = [dict(chunk.attributes) for chunk in chunks]
        assert sorted(a["madhatter.chunk"] for a in attributes) == list(range(p.SIZE // p.TRACED_CHUNK))
        for a in attributes:
            assert a["madhatter.items_in"] == a["madhatter.items_out"] == p.TRACED_CHUNK
            assert (a["madhatter.engine"], a["madhatter.retry"]) == (self.engine, 0)
            sizes = [a.get("madhatter.bytes_sent"), a.get("madhatter.bytes_received")]
            if not self.traits.ships_data:  # the chunk ran in the driver's process
                assert sizes == [0, 0]
            else:  # where the engine measured them: at least a byte per item
                assert all(size is None or size > p.TRACED_CHUNK for size in sizes), sizes
        users = named["user double"]
        assert len(users) == p.SIZE
        assert {parent(span) for span in users} == {f"madhatter chunk {stage}"}
        [user_total] = named["user total"]
        assert parent(user_total) == "madhatter step traced_total"
