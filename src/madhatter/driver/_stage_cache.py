"""The chunk cache as one stage sees it: before a chunk is launched, what is already known.

A stage whose steps all map or filter item by item is cached per item: for each item of a chunk
the driver finds the deepest step whose output for it is in the cache (lineage keys make that a
lookup per step, no value needed: ``madhatter.cache._keys``). Items known to the end are done;
the others run from the earliest step any of them needs, and their outputs, which come back per
item, are put together with the known ones in input order (:meth:`CachedChunk.merge`). So a
rerun with other chunk sizes, workers or engine still finds every item, and a run killed half
way recomputes only what was in flight.

A stage with a whole-chunk step (``@parallel``) is cached per chunk: its outputs cannot be told
apart per item, so a chunk is either found to the end or runs whole. Such hits need the chunk
boundaries of the run that filed them, so that run records where each chunk began and how long it
was, and an :class:`AligningReader` cuts a rerun's chunks the same way, whatever the chunk size
the run would have chosen: a chunk that begins at a recorded start takes its recorded length, and
a chunk ends before an item that began one.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from ..cache import CacheStore
from ..cache._fingerprint import Fingerprint, fingerprint_step
from ..cache._keys import chunk_key, chunk_start_key, content_key, lineage, output_key
from ..cache._store import StepIndex
from ..graph import Graph, Step
from ._chain import ChainCache, ChainOp
from ._channel import Chunk
from ._readers import Reader

OWN = "step-fingerprint"
"""The entry of a recorded description that holds the step's own fingerprint (its folder is named
after its lineage, which changes with the steps before it too)."""


def described(fingerprint: Fingerprint) -> dict[str, str]:
    """What is recorded beside a step's entries for ``madhatter cache explain``."""
    return {**fingerprint.parts, OWN: fingerprint.digest}


def _recorded(parts: Mapping[str, str]) -> Fingerprint:
    """The step's own fingerprint, from what :func:`described` recorded."""
    return Fingerprint(parts.get(OWN, ""), {k: v for k, v in parts.items() if k != OWN})


def step_fingerprint(step: Step, params: Mapping[str, Any]) -> Fingerprint:
    """What a step's outputs depend on besides its input: its code and what it uses, the run
    parameters it reads (as it sees them: given, or its defaults), its kind, its ``setup``'s
    code, and the user's ``cache_key=``."""
    signature = inspect.signature(step.func).parameters
    params = {name: params.get(name, signature[name].default) for name in step.param_names}
    extra: dict[str, Any] = {"kind": step.kind}
    if step.setup is not None:
        extra["setup"] = fingerprint_step(step.setup).digest
    if step.cache_key is not None:
        key = step.cache_key
        extra["cache_key"] = key() if callable(key) else key
    return fingerprint_step(step.func, params=params, extra=extra)


LOOKAHEAD = 4096
"""Items a per-item stage looks up ahead of its chunking, so that a run of items found in the
cache becomes one chunk that never runs, however small the chunks the stage would launch."""


@dataclasses.dataclass
class CachedChunk:
    """What the cache knows of one chunk, and what is left to run.

    ``start``: the step the chain starts from for the items left (``items``, keyed ``keys`` as
    that step's input, at ``positions`` of the chunk; ``keys`` is ``None`` when the worker is to
    hash them itself: nothing of the stage is cached yet). ``found``: the known outputs by
    position. ``counts``: per step, the items in and out that the cache stood in for.
    ``nested``: the items left come back with one list of outputs each, to be merged with the
    found ones in input order."""

    start: int
    items: list[Any]
    keys: list[str] | None
    positions: list[int]
    found: dict[int, list[Any]]
    counts: list[tuple[int, int]]
    nested: bool

    @property
    def complete(self) -> bool:
        return not self.items

    def merge(self, ran: list[Any]) -> list[Any]:
        """The chunk's outputs in input order, ``ran`` being the outputs of the items left (one
        list per item when ``nested``)."""
        if not self.items:
            return [output for position in sorted(self.found) for output in self.found[position]]
        if not self.nested:
            return ran
        by_position = dict(self.found)
        by_position.update(zip(self.positions, ran, strict=True))
        return [output for position in sorted(by_position) for output in by_position[position]]


def _nothing(key: str) -> None:
    """The lookup of a step that is not cached."""
    return None


class _ItemState(NamedTuple):
    """How far the cache knows one item: the number of the stage's steps known (``level``), the
    last known step's outputs, and whether that settles the item (``done``: known to the end,
    or filtered out on the way)."""

    level: int
    outputs: list[Any]
    done: bool


_UNKNOWN = _ItemState(0, [], False)


class StageCache:
    """Looks up a stage's chunks in the cache. A step's index is read the first time it is
    needed (a fully cached stage reads only its last step's), once per run."""

    def __init__(
        self, store: CacheStore, ops: Sequence[ChainOp], fingerprints: Sequence[str | None]
    ) -> None:
        self.store = store
        self.steps = tuple(op.step for op in ops)
        self.fingerprints = tuple(fingerprints)
        self.lineage = lineage(self.fingerprints)
        self.kinds = tuple(op.kind for op in ops)
        self.per_item = "chunks" not in self.kinds
        self._loaded: dict[int, StepIndex] = {}
        self._first_chunk_step = ChainCache.first_chunk_step(tuple(ops))
        self._cached = sum(f is not None for f in self.fingerprints)  # the cached steps come first
        # Every key of the stage derives from its first step's fingerprint: with nothing filed
        # under it, nothing can be found, and the workers hash the items themselves.
        first = self.lineage[0]
        self.empty = first is None or not store.has_entries(self.steps[0], first)

    def _index(self, position: int) -> StepIndex | None:
        chained = self.lineage[position]
        if chained is None:
            return None
        if position not in self._loaded:
            self._loaded[position] = self.store.index(self.steps[position], chained)
        return self._loaded[position]

    def recorded_length(self, key: str) -> int | None:
        """How many items the chunk that began with the item keyed ``key`` held, if recorded."""
        if self._first_chunk_step is None:
            return None
        index = self._index(self._first_chunk_step)
        found = index.get(chunk_start_key(key)) if index is not None else None
        return found[0] if found else None

    def look_up(self, items: list[Any], keys: list[str] | None = None) -> CachedChunk:
        """What is known of the chunk ``items`` (their ``keys``, when already computed)."""
        depth = len(self.kinds)
        if self.empty:
            nothing = [(0, 0)] * depth
            return CachedChunk(0, items, None, list(range(len(items))), {}, nothing, False)
        keys = keys if keys is not None else [content_key(item) for item in items]
        if self.per_item:
            return self.chunk_of(items, keys, self.states(keys))
        return self._whole_chunk(items, keys)

    def states(self, keys: list[str]) -> list[_ItemState]:
        """How far the cache knows each item keyed ``keys`` (per-item stages): the deepest step
        first, so an item found to the end costs one lookup. (The hot loop of a cached rerun.)"""
        depth = len(self.kinds)
        probes = [level for level in range(self._cached, 0, -1) if self.lineage[level - 1]]
        lookups: list[Any] = [None] * len(probes)  # each step's index, read when first needed
        found: list[_ItemState] = []
        for key in keys:
            for probe, level in enumerate(probes):
                get = lookups[probe]
                if get is None:
                    index = self._index(level - 1)
                    get = lookups[probe] = index.get if index is not None else _nothing
                outputs = get(key)
                if outputs is not None:
                    found.append(_ItemState(level, outputs, level == depth or not outputs))
                    break
            else:
                found.append(_UNKNOWN)
        return found

    def chunk_of(self, items: list[Any], keys: list[str], states: list[_ItemState]) -> CachedChunk:
        """The chunk of ``items`` keyed ``keys`` whose :meth:`states` are ``states``: what is
        found, and where the rest starts (the earliest step any of them needs; the others redo
        a step or two)."""
        depth = len(self.kinds)
        counts = [[0, 0] for _ in range(depth)]
        found: dict[int, list[Any]] = {}
        left: list[int] = []
        for position, state in enumerate(states):
            if state.done:
                found[position] = state.outputs
            else:
                left.append(position)
        if not left:
            self._count(counts, states)
            return CachedChunk(depth, [], [], [], found, [(a, b) for a, b in counts], False)
        start = min(states[p].level for p in left)
        values = self._values_at(start, [keys[p] for p in left], [items[p] for p in left])
        while values is None:  # an entry went missing (cleared, corrupt): start earlier
            start -= 1
            values = self._values_at(start, [keys[p] for p in left], [items[p] for p in left])
        self._count(counts, states, redo_from=start)
        final = [(a, b) for a, b in counts]
        keys_left = [keys[p] for p in left]
        return CachedChunk(start, values, keys_left, left, found, final, nested=bool(found))

    @staticmethod
    def _count(counts: list[list[int]], states: list[_ItemState], redo_from: int = 0) -> None:
        """Add the steps the cache stands in for: every known step of an item known to the end;
        of the others, the steps before ``redo_from`` (the run redoes the rest). Items are
        grouped by how far they are known, so the cost is per group, not per item and step."""
        groups: collections.Counter[tuple[int, int]] = collections.Counter()
        for state in states:
            known = state.level if state.done else min(state.level, redo_from)
            last = len(state.outputs) if known == state.level else 1
            groups[(known, last)] += 1
        for (known, last), items in groups.items():
            for step in range(known):
                counts[step][0] += items
                counts[step][1] += items * (last if step == known - 1 else 1)

    def _values_at(self, start: int, keys: list[str], items: list[Any]) -> list[Any] | None:
        """The items' values as the input of step ``start``; ``None`` if one is not in the cache."""
        if start == 0:
            return items
        index = self._index(start - 1)
        values = []
        for key in keys:
            outputs = index.get(key) if index is not None else None
            if not outputs:
                return None
            values.append(outputs[0])
        return values

    def _whole_chunk(self, items: list[Any], keys: list[str]) -> CachedChunk:
        """All or nothing: follow the chunk through every step; found only if found to the end."""
        counts: list[tuple[int, int]] = []
        bases, outputs = keys, list(items)
        for position, kind in enumerate(self.kinds):
            index, chained = self._index(position), self.lineage[position]
            if index is None or chained is None:
                break
            if kind == "chunks":
                key = chunk_key(chained, bases)
                found = index.get(key)
                if found is None:
                    break
                counts.append((len(bases), len(found)))
                bases, outputs = [output_key(key, i) for i in range(len(found))], found
                continue
            after_bases: list[str] = []
            after: list[Any] = []
            for base in bases:
                found = index.get(base)
                if found is None:
                    break
                after_bases.extend(base for _ in found)
                after.extend(found)
            else:
                counts.append((len(bases), len(after)))
                bases, outputs = after_bases, after
                continue
            break
        else:
            return CachedChunk(len(self.kinds), [], [], [], {0: outputs}, counts, False)
        no_counts = [(0, 0)] * len(self.kinds)
        return CachedChunk(0, list(items), keys, list(range(len(items))), {}, no_counts, False)


class CachedReader:
    """A stage's reader that cuts chunks by what the cache holds (when it holds any of the stage).

    Per-item stages: it looks :data:`LOOKAHEAD` items ahead, so that a run of items found to the
    end is one chunk (launched as found: no task), and a chunk to run stops before the next found
    item. Whole-chunk stages: it cuts where the cached run cut (a chunk that begins at a recorded
    start takes its recorded length; a chunk ends before an item that began one). Items read past
    a cut wait here for the next chunk; what was learnt of the chunk it returned last is kept for
    its launch (:meth:`cached_of`), so no item is hashed or looked up twice."""

    def __init__(self, reader: Reader, cache: StageCache) -> None:
        self._reader, self._cache = reader, cache
        self._held: list[Any] = []
        self._held_keys: list[str] = []
        self._last: tuple[list[Any], CachedChunk] | None = None

    def ready(self, count: int) -> bool:
        return len(self._held) >= count or self._reader.ready(count - len(self._held))

    def available(self) -> int:
        return len(self._held) + self._reader.available()

    def read(self, count: int) -> Chunk:
        if self._cache.per_item:
            items, cached = self._read_items(count)
        else:
            items, cached = self._read_aligned(count)
        self._last = (items, cached)
        return items

    def cached_of(self, items: list[Any]) -> CachedChunk | None:
        """What the cache knows of ``items``, if it is the chunk this reader last returned."""
        return self._last[1] if self._last is not None and self._last[0] is items else None

    def _read_items(self, count: int) -> tuple[list[Any], CachedChunk]:
        items, keys = self._take(max(count, LOOKAHEAD))
        states = self._cache.states(keys)
        first_found = states[0].done if states else False
        cut = len(items) if first_found else min(count, len(items))
        for position in range(1, cut):
            if states[position].done != first_found:
                cut = position
                break
        self._hold(items[cut:], keys[cut:])
        return items[:cut], self._cache.chunk_of(items[:cut], keys[:cut], states[:cut])

    def _read_aligned(self, count: int) -> tuple[list[Any], CachedChunk]:
        items, keys = self._take(count)
        recorded = self._cache.recorded_length(keys[0]) if keys else None
        if recorded is not None and recorded > len(items) and self._reader.ready(recorded - len(items)):
            more, more_keys = self._take(recorded - len(items))
            items, keys = items + more, keys + more_keys
        cut = recorded if recorded is not None and recorded <= len(items) else len(items)
        for position in range(1, cut):
            if self._cache.recorded_length(keys[position]) is not None:
                cut = position  # a recorded chunk begins here: end this one before it
                break
        self._hold(items[cut:], keys[cut:])
        return items[:cut], self._cache.look_up(items[:cut], keys[:cut])

    def _hold(self, items: list[Any], keys: list[str]) -> None:
        self._held, self._held_keys = items + self._held, keys + self._held_keys

    def _take(self, count: int) -> tuple[list[Any], list[str]]:
        items, keys = self._held[:count], self._held_keys[:count]
        del self._held[:count], self._held_keys[:count]
        if len(items) < count and self._reader.ready(1):
            fresh = self._reader.read(count - len(items))
            if not isinstance(fresh, list):
                raise RuntimeError("madhatter internal error: a remote chunk in a cached stage")
            items, keys = items + fresh, keys + [content_key(item) for item in fresh]
        return items, keys

    @property
    def exhausted(self) -> bool:
        return self._reader.exhausted and not self._held

    @property
    def total(self) -> int | None:
        return self._reader.total


def explain(store: CacheStore, graph: Graph, name: str, params: Mapping[str, Any]) -> list[str]:
    """Why step ``name`` would miss the cache now: sentences for ``madhatter cache explain``.

    A step misses when its fingerprint changed (which helper, parameter or library: compared with
    the last one recorded), or, with its own unchanged, when an earlier step's did (its outputs'
    keys derive from theirs) or its input holds items not seen before.
    """
    step = graph[name]
    if not step.is_parallel:
        return [f"step {name!r} runs in the driver and is not cached (only parallel steps are)"]
    if not step.cache:
        return [f"step {name!r} has cache=False: it always runs"]
    current = step_fingerprint(step, params)
    records = store.fingerprints(name)
    if not records:
        return [f"nothing is cached for step {name!r} yet"]
    if all(_recorded(r.parts).digest != current.digest for r in records):
        newest = records[0]
        changes = current.changes(_recorded(newest.parts))
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(newest.last_used))
        lines = [f"step {name!r} changed since its last cached run ({when}):"]
        return lines + [f"  {change}" for change in changes or ["its fingerprint differs"]]
    lines = [f"step {name!r}: its code, helpers, parameters and libraries are unchanged"]
    changed = [
        upstream
        for upstream in _upstream_parallel(graph, name)
        if graph[upstream].cache
        and all(
            _recorded(r.parts).digest != step_fingerprint(graph[upstream], params).digest
            for r in store.fingerprints(upstream)
        )
    ]
    if changed:
        names = ", ".join(repr(n) for n in changed)
        lines.append(f"  but earlier steps changed ({names}): what they feed it is new")
        lines.append("  ('madhatter cache explain' one of them says what changed)")
    else:
        lines.append("  items it misses are new inputs (or were evicted with cache clear)")
    return lines


def _upstream_parallel(graph: Graph, name: str) -> list[str]:
    """The parallel steps upstream of ``name``, nearest first."""
    found: list[str] = []
    pending = list(graph[name].upstreams)
    while pending:
        upstream = pending.pop(0)
        if upstream in found:
            continue
        if graph[upstream].is_parallel:
            found.append(upstream)
        pending.extend(graph[upstream].upstreams)
    return found
