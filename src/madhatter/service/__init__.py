"""The madhatter service (the ``madhatter[web]`` extra): a run store with a lease-based queue, workers
that execute queued runs, and a web app and JSON API to submit and watch them.

The layers, each a module with one job::

    _records.py    RunRecord, Failure, Outcome, Lease: plain data, no I/O
    _store.py      the Store interface and open_store(url): the only thing workers and the app share
    _sqlite.py     SQLiteStore: the embedded default, ``sqlite:///path`` (standard library only)
    _redis.py      RedisStore: ``redis://host:port/db``, atomic Lua scripts (needs ``redis``)
    _registry.py   the pipelines a service may run, and validation of run parameters
    _results.py    encoding a run's result (JSON when it round-trips, else a pickle) and its preview
    _progress.py   folds a run's events into per-step progress, throughput and a task timeline
    _worker.py     Worker: leases runs, executes them on an engine, heartbeats, honours cancel
    _app.py        the FastAPI app: JSON API (OpenAPI at /docs), pages, server-sent events
    _auth.py       tokens (constant-time), CSRF for form posts

Nothing here is imported by ``import madhatter``: the CLI imports it only for the service commands,
and the optional libraries (fastapi, uvicorn, jinja2, redis) only where they are used.
"""
