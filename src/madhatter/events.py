"""The progress events a run emits, for writing listeners (see docs/guide.md, "Progress events")."""

from ._events import (
    ChunkDone,
    ChunkOutput,
    ChunkRetried,
    ChunkSplit,
    ConcurrencyReduced,
    Event,
    ItemSkipped,
    Listener,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
    StepTotalKnown,
    event_from_dict,
)

__all__ = [
    "ChunkDone",
    "ChunkOutput",
    "ChunkRetried",
    "ChunkSplit",
    "ConcurrencyReduced",
    "Event",
    "ItemSkipped",
    "Listener",
    "RunFinished",
    "RunStarted",
    "StepFinished",
    "StepStarted",
    "StepTotalKnown",
    "event_from_dict",
]
