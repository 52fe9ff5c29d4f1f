"""The plain data of the service: a run's record, how it ended, and a worker's lease on it.

A run moves ``queued -> running -> succeeded | failed | cancelled``. A running run is held by one
worker under a *lease* that the worker renews by heartbeats. If the lease expires (the worker was
killed or cut off), the store puts the run back in the queue, and the next lease gets a higher
``attempt``. The attempt number is the lease's *fencing token*: every write a worker makes about a
run carries it, and the store refuses writes whose token is not the run's current one, so a stale
worker that wakes up late can never overwrite the run another worker now holds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})

HEARTBEAT_OK, HEARTBEAT_CANCEL, HEARTBEAT_LOST = "ok", "cancel", "lost"
"""What a heartbeat tells the worker: carry on; stop, the run was cancelled; stop, the lease is gone."""


@dataclasses.dataclass(frozen=True)
class Failure:
    """Why a run failed: the error's type and message, and where, when a step raised."""

    type: str
    message: str
    step: str | None = None
    chunk: int | None = None
    traceback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Failure:
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run as the store knows it.

    Attributes:
        id: the run's id (hex).
        pipeline: the registered pipeline's name.
        params: the run parameters as given (JSON values).
        status: one of :data:`STATUSES`.
        submitted_at, started_at, finished_at: wall-clock seconds; ``started_at`` is the start of
            the current attempt.
        submitted_by: who submitted it (free text from the client, for display).
        worker: the worker holding (or that last held) the run.
        attempt: how many leases the run has had; the current lease's fencing token.
        lost: how many of those leases expired (the worker died or lost the store).
        cancel_requested: a cancel was asked for while the run was running.
        error: why it failed (or was cancelled), once terminal.
        result_kind: ``"json"`` or ``"pickle"`` once it succeeded (see ``_results``).
        result_preview: a short text view of the result, made by the worker.
        items: items processed (the most items any one step received).
    """

    id: str
    pipeline: str
    params: dict[str, Any]
    status: str
    submitted_at: float
    submitted_by: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    attempt: int = 0
    lost: int = 0
    cancel_requested: bool = False
    error: Failure | None = None
    result_kind: str | None = None
    result_preview: str | None = None
    items: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def seconds(self) -> float | None:
        """How long the current (or last) attempt ran, once finished."""
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["error"] = self.error.to_dict() if self.error else None
        data["seconds"] = self.seconds
        return data


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a worker ended a run: what :meth:`Store.finish` writes, all at once."""

    status: str
    error: Failure | None = None
    result_kind: str | None = None
    result: bytes | None = None
    result_preview: str | None = None
    items: int = 0


@dataclasses.dataclass(frozen=True)
class Lease:
    """A worker's hold on a running run; ``token`` must accompany every write about it."""

    run: RunRecord
    token: int


LOST_MESSAGE = "the worker running it stopped heartbeating {lost} time(s); giving up"
