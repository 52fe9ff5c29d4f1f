"""The code that runs on a worker: one chunk through a fused chain of steps.

A :class:`ChainTask` is the task function the runner hands to every engine. It is pickled once per
worker and called once per chunk. For each step of the chain it applies the user's function to the
chunk (per chunk, per item, or as a filter), times it, and turns the user's exception into a
:class:`~madhatter.StepFailed` that names the step and chunk and carries the traceback as text.

A step with ``on_error="skip"`` whose function fails on a chunk is re-run item by item, so only the
failing items are left out; each becomes a :class:`SkippedItem` that travels back with the result.

Per-worker ``setup`` runs once per (run, step, worker thread) and is cached here, in the worker.

With the chunk cache on (``ChainTask.cache``), a chunk arrives with its items' keys and the step of
the chain to start from (the steps before it were found in the cache). Each step then runs on its
own (no one-pass groups), every step's outputs are filed under their lineage keys
(``madhatter.cache._keys``) and written to the store as soon as the chunk is done, from wherever
the chunk ran; and the outputs come back per input item while the chain is per item, so the driver
can put them together with the items it found in the cache.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import reprlib
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

from .._errors import StepFailed
from .._results import SkippedItem
from ..cache import CacheStore
from ..cache._keys import chunk_key, chunk_start_key, content_key, lineage, output_key
from ..engines import TaskTimedOut
from ..engines._deadline import deadline
from ..engines.kit import interim_sender
from ..tracing import Carrier, Spans, traced_chunk
from ._capture import Levels, Output, apply_levels, capturing, in_step

_preview = reprlib.Repr()
_preview.maxlist = _preview.maxtuple = _preview.maxset = _preview.maxdict = 4
_preview.maxstring = _preview.maxother = 60
_preview.maxlevel = 3


def preview(value: object) -> str:
    """A short, safe repr of a chunk or an item for error messages."""
    try:
        return _preview.repr(value)
    except Exception:  # a user __repr__ that raises must not hide the real error
        return f"<{type(value).__name__} object>"


@dataclasses.dataclass(frozen=True)
class ChainOp:
    """One step of a chain as the worker needs it: its function, kind and bound parameters."""

    step: str
    kind: str  # "chunks", "map" or "filter"
    func: Callable[..., Any]
    params: tuple[tuple[str, Any], ...] = ()
    setup: Callable[[], Mapping[str, Any]] | None = None
    on_error: str = "raise"


@dataclasses.dataclass(frozen=True)
class StepCount:
    """What one step did with one chunk."""

    items_in: int
    items_out: int
    seconds: float


Records = tuple[tuple[str, str, tuple[tuple[str, list[Any]], ...]], ...]
"""Cache records of a chunk: ``(step, lineage, ((key, outputs), ...))`` per step."""


@dataclasses.dataclass(frozen=True)
class ChunkOutcome:
    """The result of a chunk: outputs, per-step counts (in chain order) and skipped items.

    ``output``: what the chunk's steps printed and logged, when the run captures it
    (``_capture.py``). With the cache on: ``nested`` when ``outputs`` holds one list of outputs
    per input item, and the cache ``records`` the driver is to write (when the chunk's worker
    could not reach the store itself). ``spans``: the finished spans of a traced chunk run in
    another process than the driver's (``madhatter.tracing``); ``None`` when that worker could
    not trace it (no ``opentelemetry`` there)."""

    outputs: list[Any]
    counts: tuple[StepCount, ...]
    skipped: tuple[SkippedItem, ...] = ()
    nested: bool = False
    records: Records = ()
    output: Output = ()
    spans: Spans | None = ()


@dataclasses.dataclass(frozen=True)
class ChainCache:
    """What a chain needs to file its steps' outputs in the cache.

    ``fingerprints`` has one entry per step of the chain: ``None`` for a step that is not cached
    (``cache=False``) and every step after it in the chain (their outputs depend on its). With
    ``store=None`` the chunk's records go back to the driver, which writes them (an engine whose
    workers cannot reach the store, such as containers). ``lineage`` chains them
    (``madhatter.cache._keys.lineage``): what each step's output keys derive from."""

    fingerprints: tuple[str | None, ...]
    store: CacheStore | None
    lineage: tuple[str | None, ...] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lineage", lineage(self.fingerprints))

    @staticmethod
    def first_chunk_step(ops: tuple[ChainOp, ...]) -> int | None:
        """The position of the chain's first whole-chunk step, which records chunk boundaries."""
        return next((i for i, op in enumerate(ops) if op.kind == "chunks"), None)


_setups: dict[tuple[str, str, int], Mapping[str, Any]] = {}
_setups_lock = threading.Lock()


def _setup_kwargs(run_key: str, op: ChainOp) -> dict[str, Any]:
    kwargs = dict(op.params)
    if op.setup is None:
        return kwargs
    key = (run_key, op.step, threading.get_ident())
    with _setups_lock:
        cached = _setups.get(key)
    if cached is None:
        cached = op.setup()
        if not isinstance(cached, Mapping):
            raise TypeError(
                f"setup of step {op.step!r} must return a mapping of keyword arguments for the "
                f"step's function (e.g. {{'model': model}}), not {type(cached).__name__}"
            )
        with _setups_lock:
            _setups[key] = cached
    kwargs.update(cached)
    return kwargs


def release_setups(run_key: str) -> None:
    """Forget the setup values of a finished run (in this process)."""
    with _setups_lock:
        for key in [key for key in _setups if key[0] == run_key]:
            del _setups[key]


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` without madhatter's own frames above the user's code."""
    tb: TracebackType | None = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


class ItemFailed(Exception):
    """A per-item step's function raised on the item at ``position`` of its input (the user's
    exception is ``__cause__``)."""

    def __init__(self, position: int) -> None:
        super().__init__(position)
        self.position = position


def _per_item(items: list[Any], run: Callable[[Iterator[Any]], list[Any]]) -> list[Any]:
    """``run`` over an iterator of ``items`` that it consumes item by item; if it raises, say at
    which item (the iterator knows how far it got: no bookkeeping per item on the way)."""
    remaining = iter(items)
    try:
        return run(remaining)
    except TaskTimedOut:
        raise
    except Exception as exc:
        raise ItemFailed(len(items) - operator.length_hint(remaining) - 1) from exc


def _apply(op: ChainOp, items: list[Any], kwargs: dict[str, Any]) -> list[Any]:
    func = op.func
    # Comprehensions, not map()/filter(): since Python 3.11 a call from bytecode to a Python
    # function skips the C-level call that map() pays for each item (~10 % on W2's x*2+1).
    if op.kind == "map":
        if kwargs:
            return _per_item(items, lambda xs: [func(x, **kwargs) for x in xs])
        return _per_item(items, lambda xs: [func(x) for x in xs])
    if op.kind == "filter":
        if kwargs:
            return _per_item(items, lambda xs: [x for x in xs if func(x, **kwargs)])
        return _per_item(items, lambda xs: [x for x in xs if func(x)])
    result = func(items, **kwargs)
    if result is None or isinstance(result, (str, bytes)):
        raise TypeError(
            f"a @parallel step must return an iterable of outputs for its chunk, not "
            f"{type(result).__name__}; use @parallel.map for one output per item"
        )
    return list(result)


@dataclasses.dataclass(frozen=True)
class ChainTask:
    """Runs one chunk through a chain of steps; the task function every engine receives.

    Args (of ``__call__``): ``(chunk_index, items)``. Returns a :class:`ChunkOutcome`.
    """

    run_key: str
    ops: tuple[ChainOp, ...]
    timeout: float | None = None
    cache: ChainCache | None = None
    capture: int = 0  # characters of printed and logged output to keep per chunk (0: none)
    log_levels: Levels = ()  # the driver's logging levels, for the captured records
    trace: Carrier = ()  # the stage's trace context: the argument then ends with the attempt

    def __call__(self, argument: tuple[Any, ...]) -> ChunkOutcome:
        if self.trace:
            return traced_chunk(self.trace, argument, self._captured)
        return self._captured(argument)

    def _captured(self, argument: tuple[Any, ...]) -> ChunkOutcome:
        if not self.capture:
            return self._call(argument)
        apply_levels(self.log_levels)
        with capturing(self.capture, interim_sender()) as capture:
            try:
                outcome = self._call(argument)
            except Exception as exc:
                exc.output = capture.output()  # type: ignore[attr-defined]  # what it printed first
                raise
        return dataclasses.replace(outcome, output=capture.output())

    def _call(self, argument: tuple[Any, ...]) -> ChunkOutcome:
        """``argument`` is ``(chunk, items)``, or with the cache ``(chunk, items, start, keys,
        nested)``: run the steps from ``start`` on, ``keys`` being the items' keys as that step's
        input (``None``: hash the items here), and answer one list of outputs per item when
        ``nested`` (the driver merges them with items it found in the cache)."""
        with deadline(self.timeout):
            if len(argument) == 5 and self.cache is not None:
                chunk, items, start, keys, nested = argument
                return self._run_cached(chunk, items, start, keys, nested)
            chunk, items = argument[0], argument[1]
            return self._run(chunk, items)

    def _run(self, chunk: int, items: list[Any]) -> ChunkOutcome:
        counts: list[StepCount] = []
        skipped: list[SkippedItem] = []
        # Captured output is told apart per step, so a capturing chain makes a pass per step.
        groups = [(op,) for op in self.ops] if self.capture else _passes(self.ops)
        for group in groups:
            if len(group) > 1:
                items = self._one_pass(group, chunk, items, counts)
                continue
            op = group[0]
            if self.capture:
                in_step(op.step)
            started = time.perf_counter()
            try:
                kwargs = _setup_kwargs(self.run_key, op)
                outputs = _apply(op, items, kwargs)
            except TaskTimedOut:
                raise
            except Exception as exc:
                if op.on_error != "skip" or not items:
                    raise _failure(op.step, chunk, items, exc) from _users(exc)
                outputs = _flat(self._item_by_item(op, chunk, items, skipped))
            counts.append(StepCount(len(items), len(outputs), time.perf_counter() - started))
            items = outputs
        return ChunkOutcome(items, tuple(counts), tuple(skipped))

    def _run_cached(
        self, chunk: int, items: list[Any], start: int, keys: list[str] | None, nested: bool
    ) -> ChunkOutcome:
        """Run the steps from ``start`` one at a time, filing each one's outputs. Values travel in
        parallel lists: each value, the key its outputs derive from (the stage input's, or a
        whole-chunk step's output's) and the input item it came from."""
        assert self.cache is not None
        if keys is None:
            keys = [content_key(item) for item in items]
        counts = [StepCount(0, 0, 0.0)] * start  # found in the cache: the driver counts them
        skipped: list[SkippedItem] = []
        records: list[tuple[str, str, tuple[tuple[str, list[Any]], ...]]] = []
        values, bases, origins = items, keys, list(range(len(items)))
        first_chunk_step = self.cache.first_chunk_step(self.ops)
        for position in range(start, len(self.ops)):
            op, chained = self.ops[position], self.cache.lineage[position]
            if self.capture:
                in_step(op.step)
            started, count_in = time.perf_counter(), len(values)
            if op.kind == "chunks":
                key, values, made = self._chunk_step(op, chained, chunk, bases, values, skipped)
                bases = [output_key(key, i) for i in range(len(values))]
                origins = []  # a whole chunk's outputs belong to no one item
                if made and position == first_chunk_step and start == 0 and keys:
                    # where this chunk began and how long it was, so a rerun cuts the same way
                    made.append((chunk_start_key(keys[0]), [len(keys)]))
            else:
                bases, values, origins, made = self._item_step(
                    op, chained, chunk, bases, values, origins, skipped
                )
            counts.append(StepCount(count_in, len(values), time.perf_counter() - started))
            if chained is not None and made:
                records.append((op.step, chained, tuple(made)))
        outputs: list[Any] = values
        if nested:
            outputs = [[] for _ in items]
            for origin, value in zip(origins, values, strict=True):
                outputs[origin].append(value)
        store = self.cache.store
        if store is not None:
            for step, fingerprint, filed in records:
                store.write(step, fingerprint, filed)
        return ChunkOutcome(
            outputs, tuple(counts), tuple(skipped), nested, () if store is not None else tuple(records)
        )

    def _item_step(
        self,
        op: ChainOp,
        chained: str | None,
        chunk: int,
        bases: list[str],
        values: list[Any],
        origins: list[int],
        skipped: list[SkippedItem],
    ) -> tuple[list[str], list[Any], list[int], list[tuple[str, list[Any]]]]:
        """A map or filter step: the bases, values and origins after it, and its records (per
        input that did not fail: its base key and its 0 or 1 outputs, filed under ``chained``)."""
        kwargs = _setup_kwargs(self.run_key, op)
        func = op.func
        try:
            if op.kind == "map":
                outputs = _per_item(values, lambda xs: [func(x, **kwargs) for x in xs])
                if chained is None:
                    return bases, outputs, origins, []
                return bases, outputs, origins, [(b, [o]) for b, o in zip(bases, outputs, strict=True)]
            kept = _per_item(values, lambda xs: [bool(func(x, **kwargs)) for x in xs])
        except TaskTimedOut:
            raise
        except Exception as exc:
            if op.on_error != "skip":
                raise _failure(op.step, chunk, values, exc) from _users(exc)
            return self._item_step_skipping(op, chained, chunk, bases, values, origins, skipped)
        made = []
        if chained is not None:
            made = [(b, [v] if keep else []) for b, v, keep in zip(bases, values, kept, strict=True)]
        survivors = [i for i, keep in enumerate(kept) if keep]
        return (
            [bases[i] for i in survivors],
            [values[i] for i in survivors],
            [origins[i] for i in survivors] if origins else [],
            made,
        )

    def _item_step_skipping(
        self,
        op: ChainOp,
        chained: str | None,
        chunk: int,
        bases: list[str],
        values: list[Any],
        origins: list[int],
        skipped: list[SkippedItem],
    ) -> tuple[list[str], list[Any], list[int], list[tuple[str, list[Any]]]]:
        """The step again item by item (``on_error="skip"``): failing items are left out and not
        filed in the cache (a rerun tries them again)."""
        bases_out: list[str] = []
        values_out: list[Any] = []
        origins_out: list[int] = []
        made: list[tuple[str, list[Any]]] = []
        results = self._item_by_item(op, chunk, values, skipped)
        for position, (base, outputs) in enumerate(zip(bases, results, strict=True)):
            if outputs is None:
                continue
            if chained is not None:
                made.append((base, outputs))
            for output in outputs:
                bases_out.append(base)
                values_out.append(output)
                if origins:
                    origins_out.append(origins[position])
        return bases_out, values_out, origins_out, made

    def _chunk_step(
        self,
        op: ChainOp,
        chained: str | None,
        chunk: int,
        bases: list[str],
        values: list[Any],
        skipped: list[SkippedItem],
    ) -> tuple[str, list[Any], list[tuple[str, list[Any]]]]:
        """A whole-chunk step: its outputs' key (from the chunk's bases), its outputs and its
        records. A chunk some of whose items failed (``on_error="skip"``) is not filed."""
        failures = len(skipped)
        try:
            outputs = _apply(op, values, _setup_kwargs(self.run_key, op))
        except TaskTimedOut:
            raise
        except Exception as exc:
            if op.on_error != "skip" or not values:
                raise _failure(op.step, chunk, values, exc) from _users(exc)
            outputs = _flat(self._item_by_item(op, chunk, values, skipped))
        key = chunk_key(chained or "", bases)
        made = [(key, outputs)] if chained is not None and len(skipped) == failures else []
        return key, outputs, made

    def _compiled(self, group: tuple[ChainOp, ...]) -> Callable[[Iterable[Any]], list[Any]]:
        """The group's one-pass function, compiled once per task object (not pickled with it)."""
        cache: dict[tuple[str, ...], Callable[[Iterable[Any]], list[Any]]]
        cache = self.__dict__.setdefault("_compiled_passes", {})
        key = tuple(op.step for op in group)
        if key not in cache:
            cache[key] = _composed(tuple(op.func for op in group))
        return cache[key]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_compiled_passes"}

    def _one_pass(
        self, group: tuple[ChainOp, ...], chunk: int, items: list[Any], counts: list[StepCount]
    ) -> list[Any]:
        """Run consecutive plain map steps as one pass over the chunk (no list in between)."""
        started = time.perf_counter()
        try:
            outputs = _per_item(items, self._compiled(group))
        except TaskTimedOut:
            raise
        except Exception as exc:
            culprit = _culprit(group, _users(exc)).step
            raise _failure(culprit, chunk, items, exc) from _users(exc)
        share = (time.perf_counter() - started) / len(group)
        counts.extend(StepCount(len(items), len(outputs), share) for _ in group)
        return outputs

    def _item_by_item(
        self, op: ChainOp, chunk: int, items: list[Any], skipped: list[SkippedItem]
    ) -> list[list[Any] | None]:
        """The step on each item alone (``on_error="skip"``): each item's outputs, or ``None``
        for an item that failed (it is added to ``skipped``)."""
        results: list[list[Any] | None] = []
        kwargs = _setup_kwargs(self.run_key, op)
        for item in items:
            try:
                results.append(_apply(op, [item], kwargs))
            except TaskTimedOut:
                raise
            except Exception as exc:
                cause = _users(exc)
                error = f"{type(cause).__name__}: {cause}"
                skipped.append(SkippedItem(op.step, chunk, item, error, user_traceback(cause)))
                results.append(None)
        return results


def _flat(results: list[list[Any] | None]) -> list[Any]:
    """The outputs of the items that did not fail, in order."""
    return [output for outputs in results if outputs is not None for output in outputs]


@dataclasses.dataclass(frozen=True)
class KeepOutput:
    """A chain task whose outputs may stay on the cluster (``Task.keep_output``): it returns
    ``(summary, outputs)``, the summary being the outcome without its outputs."""

    task: ChainTask

    def __call__(self, argument: tuple[int, list[Any]]) -> tuple[ChunkOutcome, list[Any]]:
        outcome = self.task(argument)
        return dataclasses.replace(outcome, outputs=[]), outcome.outputs


def _composable(op: ChainOp) -> bool:
    return (
        op.kind == "map"
        and not op.params
        and op.setup is None
        and op.on_error == "raise"
        and hasattr(op.func, "__code__")
    )


def _passes(ops: tuple[ChainOp, ...]) -> list[tuple[ChainOp, ...]]:
    """Group runs of plain map steps, which can share one pass over a chunk; others stand alone.

    A plain map step (a Python function, no parameters, no setup, failures raise) maps items one to
    one, so ``map(g, map(f, items))`` gives the same outputs and counts as two passes, without the
    list in between (W5 of the benchmarks). Such steps share the pass's measured time equally.
    """
    groups: list[tuple[ChainOp, ...]] = []
    for op in ops:
        if groups and _composable(op) and all(_composable(o) for o in groups[-1]):
            groups[-1] = (*groups[-1], op)
        else:
            groups.append((op,))
    return groups


def _composed(funcs: tuple[Callable[..., Any], ...]) -> Callable[[Iterable[Any]], list[Any]]:
    """``[fn(...f1(f0(x))) for x in items]`` compiled for these functions: one pass, no list in
    between, and each call made from bytecode (see ``_apply``). Built like namedtuple's methods."""
    names = {f"f{i}": func for i, func in enumerate(funcs)}
    call = "x"
    for name in names:
        call = f"{name}({call})"
    source = f"lambda items: [{call} for x in items]"
    composed: Callable[[Iterable[Any]], list[Any]] = eval(source, names)
    return composed


def _culprit(group: tuple[ChainOp, ...], exc: BaseException) -> ChainOp:
    """The step of a one-pass group whose function raised: the outermost frame that is one of
    the group's functions (``map`` calls each step's function directly)."""
    codes = {op.func.__code__: op for op in group}
    tb = exc.__traceback__
    while tb is not None:
        op = codes.get(tb.tb_frame.f_code)
        if op is not None:
            return op
        tb = tb.tb_next
    return group[0]


def _users(exc: BaseException) -> BaseException:
    """The user's own exception: an :class:`ItemFailed`'s cause, else ``exc`` itself."""
    return exc.__cause__ if isinstance(exc, ItemFailed) and exc.__cause__ is not None else exc


def _failure(step: str, chunk: int, items: list[Any], exc: Exception) -> StepFailed:
    """The StepFailed for a chunk whose step raised ``exc``: naming the item when the step went
    item by item (:class:`ItemFailed`), else showing the chunk."""
    if isinstance(exc, ItemFailed) and 0 <= exc.position < len(items):
        position = exc.position
        cause = user_traceback(_users(exc))
        return StepFailed(step, chunk, preview(items), cause, position, preview(items[position]))
    return StepFailed(step, chunk, preview(items), user_traceback(exc))
