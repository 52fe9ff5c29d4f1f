"""The store: run records, the queue of runs, leases, events and results, behind one interface.

This module is the interface only; the back ends (``_sqlite``, ``_redis``) implement it, and
``_stores`` opens one by URL.

The web app writes runs and reads them; workers lease, heartbeat, append events and finish. They
share nothing else, so a store URL is all it takes to put them on different machines (Redis) or
in different processes on one (SQLite).

Guarantees every back end gives (and ``tests/service/test_store.py`` checks on each):

* **One holder.** :meth:`Store.lease` hands a queued run to exactly one caller, atomically.
* **Leases expire.** A running run whose lease was not renewed by :meth:`Store.heartbeat` within
  ``lease_seconds`` goes back to the queue at the next :meth:`Store.lease` or
  :meth:`Store.requeue_expired` (or ends ``failed`` after ``max_lost`` expiries, or ``cancelled``
  if a cancel was requested), so a run whose worker was killed is finished by another.
* **Fencing.** Heartbeats, events and :meth:`Store.finish` carry the lease's token; once the run
  was re-leased (or cancelled, or finished), the old token's writes are refused and return False.
  Together: a run is completed exactly once, or ends in a visible terminal state.
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Sequence
from typing import Any

from ._records import Lease, Outcome, RunRecord

DEFAULT_LEASE_SECONDS = 30.0
"""How long a lease lasts without a heartbeat; workers beat three times per lease."""
DEFAULT_MAX_LOST = 3
"""Expired leases after which a run is failed rather than re-queued (a run that kills workers)."""


class Store(abc.ABC):
    """Where runs, their queue, leases, events and results live (see the module docstring)."""

    url: str
    max_lost: int

    # -- the app's side ----------------------------------------------------------------------

    @abc.abstractmethod
    def submit(self, pipeline: str, params: dict[str, Any], *, submitted_by: str = "") -> RunRecord:
        """Record a new run as ``queued`` and put it at the end of the queue."""

    @abc.abstractmethod
    def get(self, run_id: str) -> RunRecord | None:
        """The run's record, or None if there is no such run."""

    @abc.abstractmethod
    def list_runs(
        self, *, pipeline: str | None = None, status: str | None = None, offset: int = 0, limit: int = 50
    ) -> tuple[list[RunRecord], int]:
        """Runs newest first, filtered, one page of them, and how many match in all."""

    @abc.abstractmethod
    def cancel(self, run_id: str) -> RunRecord | None:
        """Cancel a run: a queued one ends ``cancelled`` at once; a running one is flagged, and
        its worker stops it at its next heartbeat. Terminal runs are left as they are."""

    @abc.abstractmethod
    def events(self, run_id: str, *, after: int = 0) -> list[tuple[int, dict[str, Any]]]:
        """The run's events after cursor ``after``, as ``(cursor, event dict)``, in order."""

    @abc.abstractmethod
    def result(self, run_id: str) -> tuple[str, bytes] | None:
        """``(kind, data)`` of a succeeded run's result, or None."""

    # -- the workers' side -------------------------------------------------------------------

    @abc.abstractmethod
    def lease(self, worker: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Lease | None:
        """Take the oldest queued run (after re-queueing expired leases), or None if none waits."""

    @abc.abstractmethod
    def heartbeat(self, run_id: str, token: int, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> str:
        """Renew a lease. Returns ``ok``, ``cancel`` (stop: a cancel was asked) or ``lost``."""

    @abc.abstractmethod
    def add_events(self, run_id: str, token: int, events: Sequence[dict[str, Any]]) -> bool:
        """Append events to a run the caller holds; False (nothing written) if the lease is gone."""

    @abc.abstractmethod
    def finish(self, run_id: str, token: int, outcome: Outcome) -> bool:
        """End a run the caller holds; False (nothing written) if the lease is gone."""

    @abc.abstractmethod
    def release(self, run_id: str, token: int) -> bool:
        """Give a held run back to the queue (a worker shutting down); False if the lease is gone."""

    @abc.abstractmethod
    def requeue_expired(self) -> list[str]:
        """Re-queue (or end) runs whose lease expired; returns their ids."""

    def wait_for_work(self, seconds: float) -> None:
        """Wait up to ``seconds`` for a run to be submitted (an idle worker's pause between
        leases). The default just sleeps: a worker then polls every ``seconds``."""
        time.sleep(seconds)

    # -- retention ---------------------------------------------------------------------------

    @abc.abstractmethod
    def prune(self, older_than_seconds: float) -> int:
        """Remove runs that ended (``succeeded``, ``failed`` or ``cancelled``) more than
        ``older_than_seconds`` ago, with their events and results; returns how many. Queued and
        running runs are never touched, and each removal is atomic, so it is safe while workers
        run (``madhatter runs prune``, ``madhatter serve --keep``)."""

    # -- settings shared by the server and workers ------------------------------------------

    @abc.abstractmethod
    def set_meta(self, key: str, value: str) -> None:
        """Store a setting, e.g. the pipelines the server registered, for workers to read."""

    @abc.abstractmethod
    def get_meta(self, key: str) -> str | None:
        """A setting stored by :meth:`set_meta`, or None."""

    def close(self) -> None:  # noqa: B027 (a no-op is the right default)
        """Release connections."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dumps(value: Any) -> str:
    """Compact JSON, as the stores keep params, errors and events."""
    return json.dumps(value, separators=(",", ":"), default=repr)
