"""The madhatter service (the ``madhatter[web]`` extra): a run store with a lease-based queue, workers
that execute queued runs, and a web app and JSON API to submit and watch them.

The public face, all the command line uses::

    serve(targets, ...)          the web pages and JSON API (``madhatter serve``), and optionally
                                 one worker process it starts and stops
    Worker                       executes queued runs of registered pipelines on an engine
    work(worker)                 a worker process's life (``madhatter worker``): until SIGTERM
    follow_serve()               in a worker process serve started: stop when serve does
    Registry, recorded_targets   the pipelines a service may run; those ``serve`` recorded
    open_store(url), Store       the run store at ``sqlite:///FILE`` or ``redis://HOST:PORT/DB``
    store_url(url)               the URL meant: the one given, ``$MADHATTER_BROKER``, or the default
    StoreError, DEFAULT_BROKER   a bad store URL; the store when none is named
    Client, ClientError          a client of the JSON API (standard library only)

The layers behind it, each a module with one job::

    _records.py    RunRecord, Failure, Outcome, Lease: plain data, no I/O
    _store.py      the Store interface: the only thing workers and the app share
    _sqlite.py     SQLiteStore: the embedded default, ``sqlite:///path`` (standard library only)
    _redis.py      RedisStore: ``redis://host:port/db``, atomic Lua scripts (needs ``redis``)
    _stores.py     open_store(url): the one module that knows every back end
    _registry.py   the pipelines a service may run, and validation of run parameters
    _param_schema.py  a run parameter's JSON Schema, and the check that accepts exactly that
    _results.py    encoding a run's result (JSON when it round-trips, else a pickle) and its preview
    _progress.py   what a run's page shows: the core's per-step progress, a timeline, the log
    _worker.py     Worker: leases runs, executes them on an engine, heartbeats, honours cancel
    _processes.py  serve() and work(): the two long-running processes, and how they stop together
    _app.py        the FastAPI app: JSON API (OpenAPI at /docs), pages, server-sent events
    _openapi.py    the OpenAPI schema completed: each pipeline's parameters, the token
    _auth.py       tokens (constant-time), CSRF for form posts
    _client.py     Client: the JSON API over urllib, for ``submit``, ``runs`` and ``status``

Nothing here is imported by ``import madhatter``: the CLI imports it only for the service commands.
Importing this package loads no web library either: fastapi, uvicorn and jinja2 load when
:func:`serve` starts, and redis when a ``redis://`` store is opened.
"""

from ._client import Client, ClientError
from ._processes import follow_serve, serve, work
from ._registry import Registry, recorded_targets
from ._store import Store
from ._stores import DEFAULT_BROKER, StoreError, open_store, store_url
from ._worker import Worker

__all__ = [
    "DEFAULT_BROKER",
    "Client",
    "ClientError",
    "Registry",
    "Store",
    "StoreError",
    "Worker",
    "follow_serve",
    "open_store",
    "recorded_targets",
    "serve",
    "store_url",
    "work",
]
