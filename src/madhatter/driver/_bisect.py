"""Finding the items of a chunk that kill their worker or run past the timeout, by bisection.

A chunk whose worker died (or that timed out) says nothing about which of its items did it: the
process is gone. Once its retries are used up, the stage runner (``_stage.py``) reruns the chunk's
two halves as tasks on the engine, then the halves of whichever half fails, and so on, until the
failing parts are single items. One poison item in ``n`` costs about ``2 * log2(n)`` extra tasks
and ``2 * n`` items rerun; ``k`` of them at most ``k`` times that. A :class:`Bisection` is the
bookkeeping of one such chunk: which parts are still out, and the outputs of those that
finished, so the chunk's output is re-assembled in input order, without the failing items.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..engines import TaskLost, TaskTimedOut

Part = tuple[int, int]
"""A slice ``start:stop`` of a chunk's items."""


def may_bisect(error: BaseException) -> bool:
    """Whether a chunk failing with ``error`` is worth splitting: its worker died or it ran past
    the timeout (a failure that may belong to one item). A step that raised is not: the worker
    already knows the item (``StepFailed.item``, ``on_error="skip"``)."""
    return isinstance(error, (TaskLost, TaskTimedOut))


def halves(part: Part) -> tuple[Part, Part]:
    """The two halves of a part of at least two items."""
    start, stop = part
    middle = (start + stop + 1) // 2
    return (start, middle), (middle, stop)


@dataclasses.dataclass
class Bisection:
    """One chunk being bisected: its items, the parts still out, the outputs of finished parts."""

    items: list[Any]
    out: int = 0
    _outputs: dict[int, list[Any]] = dataclasses.field(default_factory=dict)

    def split(self, part: Part | None) -> tuple[Part, Part]:
        """The halves of ``part`` (the whole chunk when ``None``), now both out."""
        whole = part is None
        first, second = halves((0, len(self.items)) if part is None else part)
        self.out += 2 - (0 if whole else 1)
        return first, second

    def finished_part(self, part: Part, outputs: list[Any]) -> bool:
        """Record ``part``'s outputs (``[]`` for a failing item left out); whether every part is
        now in."""
        self._outputs[part[0]] = outputs
        self.out -= 1
        return self.out == 0

    def outputs(self) -> list[Any]:
        """The chunk's outputs, in input order, once every part is in."""
        return [output for start in sorted(self._outputs) for output in self._outputs[start]]
