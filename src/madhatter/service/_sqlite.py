"""``SQLiteStore``: the embedded store, one SQLite file that ``serve`` and ``worker`` share.

No server to run: processes on one machine share the file, and SQLite's locking makes each
operation atomic. Every write that must be atomic (taking a lease, re-queueing expired ones,
fenced writes) runs in a ``BEGIN IMMEDIATE`` transaction, which takes the file's write lock up
front, so two workers can never read the same queued run and both take it. WAL mode lets the app
read while a worker writes. Times are this machine's clock, shared by every process using the file.

One connection per store object, guarded by a lock, so a store may be shared by threads (the app's
request threads, a worker's slots and its heartbeat thread).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ._records import (
    CANCELLED,
    FAILED,
    HEARTBEAT_CANCEL,
    HEARTBEAT_LOST,
    HEARTBEAT_OK,
    LOST_MESSAGE,
    QUEUED,
    RUNNING,
    TERMINAL,
    Failure,
    Lease,
    Outcome,
    RunRecord,
)
from ._store import DEFAULT_LEASE_SECONDS, DEFAULT_MAX_LOST, Store, dumps

BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    pipeline TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    submitted_by TEXT NOT NULL DEFAULT '',
    started_at REAL,
    finished_at REAL,
    worker TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0,
    lease_expires REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result_kind TEXT,
    result_preview TEXT,
    result BLOB,
    items INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, seq);
CREATE INDEX IF NOT EXISTS runs_by_pipeline ON runs (pipeline, seq);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_COLUMNS = (
    "id, pipeline, params, status, submitted_at, submitted_by, started_at, finished_at, worker, "
    "attempt, lost, cancel_requested, error, result_kind, result_preview, items"
)


def _record(row: sqlite3.Row) -> RunRecord:
    error = json.loads(row["error"]) if row["error"] else None
    return RunRecord(
        id=row["id"],
        pipeline=row["pipeline"],
        params=json.loads(row["params"]),
        status=row["status"],
        submitted_at=row["submitted_at"],
        submitted_by=row["submitted_by"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        worker=row["worker"],
        attempt=row["attempt"],
        lost=row["lost"],
        cancel_requested=bool(row["cancel_requested"]),
        error=Failure.from_dict(error) if error else None,
        result_kind=row["result_kind"],
        result_preview=row["result_preview"],
        items=row["items"],
    )


class SQLiteStore(Store):
    """The store in one SQLite file (see the module docstring)."""

    def __init__(self, path: str, *, url: str | None = None, max_lost: int = DEFAULT_MAX_LOST) -> None:
        self.url = url or f"sqlite:///{path}"
        self.max_lost = max_lost
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        self._db.isolation_level = None  # transactions are explicit
        self._db.row_factory = sqlite3.Row
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        with self._lock:
            self._db.executescript(_SCHEMA)  # IF NOT EXISTS: every process may run it

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locked) transaction: committed on success, rolled back on error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- the app's side ----------------------------------------------------------------------

    def submit(self, pipeline: str, params: dict[str, Any], *, submitted_by: str = "") -> RunRecord:
        run_id = uuid.uuid4().hex[:16]
        with self._write() as db:
            db.execute(
                "INSERT INTO runs (id, pipeline, params, status, submitted_at, submitted_by) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, pipeline, dumps(params), QUEUED, time.time(), submitted_by),
            )
        record = self.get(run_id)
        assert record is not None
        return record

    def get(self, run_id: str) -> RunRecord | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        return _record(rows[0]) if rows else None

    def list_runs(
        self, *, pipeline: str | None = None, status: str | None = None, offset: int = 0, limit: int = 50
    ) -> tuple[list[RunRecord], int]:
        where, args = [], []
        if pipeline:
            where.append("pipeline = ?")
            args.append(pipeline)
        if status:
            where.append("status = ?")
            args.append(status)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        total = self._read(f"SELECT count(*) FROM runs {clause}", args)[0][0]
        rows = self._read(
            f"SELECT {_COLUMNS} FROM runs {clause} ORDER BY seq DESC LIMIT ? OFFSET ?",
            [*args, max(0, limit), max(0, offset)],
        )
        return [_record(row) for row in rows], int(total)

    def cancel(self, run_id: str) -> RunRecord | None:
        with self._write() as db:
            db.execute(
                "UPDATE runs SET status = ?, finished_at = ?, error = ? WHERE id = ? AND status = ?",
                (CANCELLED, time.time(), _cancelled_error(), run_id, QUEUED),
            )
            db.execute(
                "UPDATE runs SET cancel_requested = 1 WHERE id = ? AND status = ?", (run_id, RUNNING)
            )
        return self.get(run_id)

    def events(self, run_id: str, *, after: int = 0) -> list[tuple[int, dict[str, Any]]]:
        rows = self._read(
            "SELECT seq, data FROM events WHERE run_id = ? AND seq > ? ORDER BY seq", (run_id, after)
        )
        return [(row["seq"], json.loads(row["data"])) for row in rows]

    def result(self, run_id: str) -> tuple[str, bytes] | None:
        rows = self._read("SELECT result_kind, result FROM runs WHERE id = ?", (run_id,))
        if not rows or rows[0]["result_kind"] is None or rows[0]["result"] is None:
            return None
        return rows[0]["result_kind"], bytes(rows[0]["result"])

    # -- the workers' side -------------------------------------------------------------------

    def lease(self, worker: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Lease | None:
        with self._write() as db:
            now = time.time()
            self._requeue_expired(db, now)
            row = db.execute(
                "SELECT id FROM runs WHERE status = ? ORDER BY seq LIMIT 1", (QUEUED,)
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE runs SET status = ?, worker = ?, attempt = attempt + 1, started_at = ?, "
                "lease_expires = ? WHERE id = ?",
                (RUNNING, worker, now, now + lease_seconds, row["id"]),
            )
            record = _record(
                db.execute(f"SELECT {_COLUMNS} FROM runs WHERE id = ?", (row["id"],)).fetchone()
            )
        return Lease(record, record.attempt)

    def heartbeat(self, run_id: str, token: int, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> str:
        with self._write() as db:
            updated = db.execute(
                "UPDATE runs SET lease_expires = ? WHERE id = ? AND status = ? AND attempt = ?",
                (time.time() + lease_seconds, run_id, RUNNING, token),
            ).rowcount
            if not updated:
                return HEARTBEAT_LOST
            row = db.execute("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
        return HEARTBEAT_CANCEL if row["cancel_requested"] else HEARTBEAT_OK

    def add_events(self, run_id: str, token: int, events: Sequence[dict[str, Any]]) -> bool:
        with self._write() as db:
            if not self._holds(db, run_id, token):
                return False
            db.executemany(
                "INSERT INTO events (run_id, attempt, data) VALUES (?, ?, ?)",
                [(run_id, token, dumps({**event, "attempt": token})) for event in events],
            )
        return True

    def finish(self, run_id: str, token: int, outcome: Outcome) -> bool:
        with self._write() as db:
            updated = db.execute(
                "UPDATE runs SET status = ?, finished_at = ?, lease_expires = NULL, error = ?, "
                "result_kind = ?, result = ?, result_preview = ?, items = ? "
                "WHERE id = ? AND status = ? AND attempt = ?",
                (
                    outcome.status,
                    time.time(),
                    dumps(outcome.error.to_dict()) if outcome.error else None,
                    outcome.result_kind,
                    outcome.result,
                    outcome.result_preview,
                    outcome.items,
                    run_id,
                    RUNNING,
                    token,
                ),
            ).rowcount
        return bool(updated)

    def release(self, run_id: str, token: int) -> bool:
        with self._write() as db:
            updated = db.execute(
                "UPDATE runs SET status = ?, lease_expires = NULL WHERE id = ? AND status = ? "
                "AND attempt = ? AND cancel_requested = 0",
                (QUEUED, run_id, RUNNING, token),
            ).rowcount
        return bool(updated)

    def requeue_expired(self) -> list[str]:
        with self._write() as db:
            return self._requeue_expired(db, time.time())

    def _requeue_expired(self, db: sqlite3.Connection, now: float) -> list[str]:
        rows = db.execute(
            "SELECT id, lost, cancel_requested FROM runs WHERE status = ? AND lease_expires < ?",
            (RUNNING, now),
        ).fetchall()
        for row in rows:
            lost = row["lost"] + 1
            if row["cancel_requested"]:
                status, error = CANCELLED, _cancelled_error()
            elif lost >= self.max_lost:
                status = FAILED
                error = dumps(Failure("WorkerLost", LOST_MESSAGE.format(lost=lost)).to_dict())
            else:
                status, error = QUEUED, None
            finished = None if status == QUEUED else now
            db.execute(
                "UPDATE runs SET status = ?, lost = ?, lease_expires = NULL, error = ?, "
                "finished_at = ? WHERE id = ?",
                (status, lost, error, finished, row["id"]),
            )
        return [row["id"] for row in rows]

    @staticmethod
    def _holds(db: sqlite3.Connection, run_id: str, token: int) -> bool:
        row = db.execute(
            "SELECT 1 FROM runs WHERE id = ? AND status = ? AND attempt = ?", (run_id, RUNNING, token)
        ).fetchone()
        return row is not None

    # -- retention ---------------------------------------------------------------------------

    def prune(self, older_than_seconds: float) -> int:
        statuses = sorted(TERMINAL)
        marks = ", ".join("?" * len(statuses))
        with self._write() as db:
            cutoff = time.time() - older_than_seconds
            chosen = (
                f"SELECT id FROM runs WHERE status IN ({marks}) AND finished_at IS NOT NULL "
                "AND finished_at < ?"
            )
            args = [*statuses, cutoff]
            db.execute(f"DELETE FROM events WHERE run_id IN ({chosen})", args)
            removed = db.execute(f"DELETE FROM runs WHERE id IN ({chosen})", args).rowcount
        return int(removed)

    # -- settings ----------------------------------------------------------------------------

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _cancelled_error() -> str:
    return dumps(Failure("RunCancelled", "cancelled on request").to_dict())
