"""``RedisStore``: the store on a Redis server, ``redis://host:port/db``, for several machines.

Keys (all under a prefix, ``madhatter:`` by default)::

    run:<id>      hash      the run's record (JSON for params and error)
    result:<id>   string    the encoded result
    events:<id>   list      the run's events, JSON, in order (the cursor is the index + 1)
    runs          zset      every run id, scored by submission order (listing, newest first)
    queued        zset      queued run ids, scored by submission order (oldest leased first)
    leases        zset      running run ids, scored by when their lease expires
    seq           counter   submission order
    wake          list      one entry per submission, for idle workers blocked on it (BLPOP)
    meta          hash      settings shared by the server and workers

Every operation that reads and then writes (taking a lease, re-queueing expired leases, fenced
writes, cancel) is one Lua script, which Redis runs atomically, so no two workers can take one run
and no stale worker can write over a re-leased one. Lease times use the Redis server's clock
(``TIME``), so workers on machines with skewed clocks still agree on when a lease expires.
One Redis server (not a Redis Cluster): the scripts touch keys they compute.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from ._extras import require_web
from ._records import QUEUED, Failure, Lease, Outcome, RunRecord
from ._store import DEFAULT_LEASE_SECONDS, DEFAULT_MAX_LOST, Store, dumps

redis = require_web("redis")

WAKE_LIMIT = 1000
"""Wake-up entries kept (one per submission nobody waited for): enough to wake every idle worker."""

_PREAMBLE = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function holds(key, token)
  local state = redis.call('HMGET', key, 'status', 'attempt')
  return state[1] == 'running' and state[2] == token
end
"""

# KEYS: leases, queued. ARGV: prefix, max_lost, now. Returns the re-queued or ended ids.
_REQUEUE = """
local function requeue(prefix, max_lost, t)
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', t)
  for _, id in ipairs(ids) do
    redis.call('ZREM', KEYS[1], id)
    local key = prefix .. 'run:' .. id
    local state = redis.call('HMGET', key, 'status', 'lost', 'cancel_requested', 'seq')
    if state[1] == 'running' then
      local lost = tonumber(state[2]) + 1
      if state[3] == '1' then
        redis.call('HSET', key, 'status', 'cancelled', 'lost', lost, 'finished_at', t, 'error',
          cjson.encode({type='RunCancelled', message='cancelled on request'}))
      elseif lost >= max_lost then
        redis.call('HSET', key, 'status', 'failed', 'lost', lost, 'finished_at', t, 'error',
          cjson.encode({type='WorkerLost', message=string.format(
            'the worker running it stopped heartbeating %d time(s); giving up', lost)}))
      else
        redis.call('HSET', key, 'status', 'queued', 'lost', lost)
        redis.call('ZADD', KEYS[2], tonumber(state[4]), id)
      end
    end
  end
  return ids
end
"""

_LEASE = (
    _PREAMBLE
    + _REQUEUE
    + """
-- KEYS: leases, queued. ARGV: prefix, max_lost, worker, lease_seconds
local t = now()
requeue(ARGV[1], tonumber(ARGV[2]), t)
local popped = redis.call('ZPOPMIN', KEYS[2])
if #popped == 0 then return false end
local id = popped[1]
local key = ARGV[1] .. 'run:' .. id
local attempt = redis.call('HINCRBY', key, 'attempt', 1)
redis.call('HSET', key, 'status', 'running', 'worker', ARGV[3], 'started_at', t)
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[4]), id)
return {id, attempt}
"""
)

_REQUEUE_ONLY = (
    _PREAMBLE
    + _REQUEUE
    + """
return requeue(ARGV[1], tonumber(ARGV[2]), now())
"""
)

_HEARTBEAT = (
    _PREAMBLE
    + """
-- KEYS: run, leases. ARGV: id, token, lease_seconds
if not holds(KEYS[1], ARGV[2]) then return 'lost' end
redis.call('ZADD', KEYS[2], now() + tonumber(ARGV[3]), ARGV[1])
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then return 'cancel' end
return 'ok'
"""
)

_ADD_EVENTS = (
    _PREAMBLE
    + """
-- KEYS: run, events. ARGV: token, event...
if not holds(KEYS[1], ARGV[1]) then return 0 end
for i = 2, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
return 1
"""
)

_FINISH = (
    _PREAMBLE
    + """
-- KEYS: run, leases, result. ARGV: id, token, status, error, result_kind, result, preview, items
if not holds(KEYS[1], ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished_at', now(), 'error', ARGV[4],
  'result_kind', ARGV[5], 'result_preview', ARGV[7], 'items', ARGV[8])
if ARGV[5] ~= '' then redis.call('SET', KEYS[3], ARGV[6]) end
return 1
"""
)

_RELEASE = (
    _PREAMBLE
    + """
-- KEYS: run, leases, queued. ARGV: id, token
if not holds(KEYS[1], ARGV[2]) or redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'queued')
redis.call('ZADD', KEYS[3], tonumber(redis.call('HGET', KEYS[1], 'seq')), ARGV[1])
return 1
"""
)

_CANCEL = (
    _PREAMBLE
    + """
-- KEYS: run, queued. ARGV: id
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', now(), 'error',
    cjson.encode({type='RunCancelled', message='cancelled on request'}))
elseif status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
end
return status
"""
)


_PRUNE = (
    _PREAMBLE
    + """
-- KEYS: runs, queued, leases. ARGV: prefix, older_than_seconds, id...
-- Re-checks each run here, atomically: one that ended meanwhile too recently, or was re-queued,
-- stays. Runs whose record is gone (a half-written submission) are only dropped from the index.
local cutoff = now() - tonumber(ARGV[2])
local removed = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local key = ARGV[1] .. 'run:' .. id
  local state = redis.call('HMGET', key, 'status', 'finished_at')
  local status, finished = state[1], tonumber(state[2])
  if (status == 'succeeded' or status == 'failed' or status == 'cancelled')
      and finished ~= nil and finished < cutoff then
    redis.call('DEL', key, ARGV[1] .. 'events:' .. id, ARGV[1] .. 'result:' .. id)
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
    removed = removed + 1
  end
end
return removed
"""
)

PRUNE_BATCH = 500
"""Runs examined per prune script: each batch is atomic, and short enough not to stall Redis."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional_float(value: Any) -> float | None:
    return float(value) if value not in (None, b"", "") else None


def _record(fields: dict[bytes, bytes]) -> RunRecord:
    data = {_text(k): _text(v) for k, v in fields.items() if k != b"result"}
    error = data.get("error")
    failure = json.loads(error) if error else None
    return RunRecord(
        id=data["id"],
        pipeline=data["pipeline"],
        params=json.loads(data["params"]),
        status=data["status"],
        submitted_at=float(data["submitted_at"]),
        submitted_by=data.get("submitted_by", ""),
        started_at=_optional_float(data.get("started_at")),
        finished_at=_optional_float(data.get("finished_at")),
        worker=data.get("worker") or None,
        attempt=int(data.get("attempt", 0)),
        lost=int(data.get("lost", 0)),
        cancel_requested=data.get("cancel_requested") == "1",
        error=Failure.from_dict(failure) if failure else None,
        result_kind=data.get("result_kind") or None,
        result_preview=data.get("result_preview") or None,
        items=int(data.get("items") or 0),
    )


class RedisStore(Store):
    """The store on a Redis server (see the module docstring)."""

    def __init__(
        self, url: str, *, max_lost: int = DEFAULT_MAX_LOST, prefix: str = "madhatter:"
    ) -> None:
        self.url = url
        self.max_lost = max_lost
        self._prefix = prefix
        self._redis = redis.Redis.from_url(url)
        self._lease = self._redis.register_script(_LEASE)
        self._requeue = self._redis.register_script(_REQUEUE_ONLY)
        self._heartbeat = self._redis.register_script(_HEARTBEAT)
        self._add_events = self._redis.register_script(_ADD_EVENTS)
        self._finish = self._redis.register_script(_FINISH)
        self._release = self._redis.register_script(_RELEASE)
        self._cancel = self._redis.register_script(_CANCEL)
        self._prune = self._redis.register_script(_PRUNE)

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    # -- the app's side ----------------------------------------------------------------------

    def submit(self, pipeline: str, params: dict[str, Any], *, submitted_by: str = "") -> RunRecord:
        run_id = uuid.uuid4().hex[:16]
        seq = int(self._redis.incr(self._key("seq")))
        fields = {
            "id": run_id,
            "seq": seq,
            "pipeline": pipeline,
            "params": dumps(params),
            "status": QUEUED,
            "submitted_at": time.time(),
            "submitted_by": submitted_by,
            "attempt": 0,
            "lost": 0,
            "cancel_requested": 0,
            "items": 0,
        }
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key("run", run_id), mapping=fields)
            pipe.zadd(self._key("runs"), {run_id: seq})
            pipe.zadd(self._key("queued"), {run_id: seq})
            pipe.lpush(self._key("wake"), 1)
            pipe.ltrim(self._key("wake"), 0, WAKE_LIMIT - 1)
            pipe.execute()
        record = self.get(run_id)
        assert record is not None
        return record

    def get(self, run_id: str) -> RunRecord | None:
        fields = self._redis.hgetall(self._key("run", run_id))
        return _record(fields) if fields else None

    def list_runs(
        self, *, pipeline: str | None = None, status: str | None = None, offset: int = 0, limit: int = 50
    ) -> tuple[list[RunRecord], int]:
        ids = [_text(i) for i in self._redis.zrevrange(self._key("runs"), 0, -1)]
        if pipeline or status:
            with self._redis.pipeline(transaction=False) as pipe:
                for run_id in ids:
                    pipe.hmget(self._key("run", run_id), ["pipeline", "status"])
                found = pipe.execute()
            ids = [
                run_id
                for run_id, (p, s) in zip(ids, found, strict=True)
                if (not pipeline or _text(p) == pipeline) and (not status or _text(s) == status)
            ]
        page = ids[max(0, offset) : max(0, offset) + max(0, limit)]
        with self._redis.pipeline(transaction=False) as pipe:
            for run_id in page:
                pipe.hgetall(self._key("run", run_id))
            rows = pipe.execute()
        return [_record(row) for row in rows if row], len(ids)

    def cancel(self, run_id: str) -> RunRecord | None:
        self._cancel(keys=[self._key("run", run_id), self._key("queued")], args=[run_id])
        return self.get(run_id)

    def events(self, run_id: str, *, after: int = 0) -> list[tuple[int, dict[str, Any]]]:
        raw = self._redis.lrange(self._key("events", run_id), max(0, after), -1)
        return [(after + i + 1, json.loads(item)) for i, item in enumerate(raw)]

    def result(self, run_id: str) -> tuple[str, bytes] | None:
        kind = self._redis.hget(self._key("run", run_id), "result_kind")
        data = self._redis.get(self._key("result", run_id))
        if not kind or data is None:
            return None
        return _text(kind), bytes(data)

    # -- the workers' side -------------------------------------------------------------------

    def lease(self, worker: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Lease | None:
        taken = self._lease(
            keys=[self._key("leases"), self._key("queued")],
            args=[self._prefix, self.max_lost, worker, lease_seconds],
        )
        if not taken:
            return None
        run_id, attempt = _text(taken[0]), int(taken[1])
        record = self.get(run_id)
        assert record is not None
        return Lease(record, attempt)

    def heartbeat(self, run_id: str, token: int, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> str:
        answer = self._heartbeat(
            keys=[self._key("run", run_id), self._key("leases")], args=[run_id, token, lease_seconds]
        )
        return _text(answer)

    def add_events(self, run_id: str, token: int, events: Sequence[dict[str, Any]]) -> bool:
        tagged = [dumps({**event, "attempt": token}) for event in events]
        keys = [self._key("run", run_id), self._key("events", run_id)]
        return bool(self._add_events(keys=keys, args=[token, *tagged]))

    def finish(self, run_id: str, token: int, outcome: Outcome) -> bool:
        keys = [self._key("run", run_id), self._key("leases"), self._key("result", run_id)]
        args = [
            run_id,
            token,
            outcome.status,
            dumps(outcome.error.to_dict()) if outcome.error else "",
            outcome.result_kind or "",
            outcome.result or b"",
            outcome.result_preview or "",
            outcome.items,
        ]
        return bool(self._finish(keys=keys, args=args))

    def release(self, run_id: str, token: int) -> bool:
        keys = [self._key("run", run_id), self._key("leases"), self._key("queued")]
        return bool(self._release(keys=keys, args=[run_id, token]))

    def wait_for_work(self, seconds: float) -> None:
        """Block on the ``wake`` list: a submission wakes one idle worker at once, instead of at
        its next poll. A wake-up with nothing left to lease (another worker was faster, or the
        entry is old) only costs one empty lease."""
        self._redis.blpop([self._key("wake")], timeout=max(seconds, 0.01))

    def requeue_expired(self) -> list[str]:
        ids = self._requeue(
            keys=[self._key("leases"), self._key("queued")], args=[self._prefix, self.max_lost]
        )
        return [_text(i) for i in ids]

    # -- retention ---------------------------------------------------------------------------

    def prune(self, older_than_seconds: float) -> int:
        """Batches of :data:`PRUNE_BATCH` ids from the ``runs`` index, oldest first, each checked
        and removed by one script (so a run finishing meanwhile is judged on its state then)."""
        ids = [_text(i) for i in self._redis.zrange(self._key("runs"), 0, -1)]
        keys = [self._key("runs"), self._key("queued"), self._key("leases")]
        removed = 0
        for start in range(0, len(ids), PRUNE_BATCH):
            batch = ids[start : start + PRUNE_BATCH]
            removed += int(self._prune(keys=keys, args=[self._prefix, older_than_seconds, *batch]))
        return removed

    # -- settings ----------------------------------------------------------------------------

    def set_meta(self, key: str, value: str) -> None:
        self._redis.hset(self._key("meta"), key, value)

    def get_meta(self, key: str) -> str | None:
        value = self._redis.hget(self._key("meta"), key)
        return None if value is None else _text(value)

    def close(self) -> None:
        self._redis.close()
