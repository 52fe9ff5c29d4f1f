"""Telling an out-of-memory kill from other deaths, so a stage can lower its concurrency.

Only what an engine says for sure counts: Docker's ``OOMKilled`` state (the docker engine's
"was OOMKilled"), or an engine's "out of memory" when it checked the kernel's OOM killer did it.
A bare SIGKILL is not enough (anyone may send one): the processes engine's "(often the
out-of-memory killer)" is a hint for a person, not a signal for the runner.
"""

from __future__ import annotations

from ..engines import TaskLost

OOM_MARKERS = ("OOMKilled", "out of memory")


def killed_for_memory(error: BaseException) -> bool:
    """Whether ``error`` says its worker was killed for using too much memory."""
    return isinstance(error, TaskLost) and any(marker in error.detail for marker in OOM_MARKERS)


def lowered(window: int, launched_at: int) -> int:
    """The concurrency after an OOM kill of a chunk launched while ``launched_at`` chunks could run
    at once: half of that (at least 1), and never above the current ``window`` -- several chunks
    killed by the same shortage halve it once, not once each."""
    return min(window, max(1, launched_at // 2))
