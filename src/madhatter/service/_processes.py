"""The service's two long-running processes: :func:`serve` (the web app, and the one worker it may
start) and :func:`work` (a :class:`Worker`), as ``madhatter serve`` and ``madhatter worker`` run them.

``serve(with_worker=True)`` starts a ``madhatter worker`` process on the same store and stops it
when it stops itself. It cannot count on getting the chance: uvicorn re-raises SIGTERM once it has
shut down, which ends the process before any ``finally`` of ours, and SIGKILL gives none at all. So
the worker watches instead: :data:`PARENT_ENV` gives it serve's pid, and :func:`work` stops (as
gracefully as on SIGTERM) once that process is gone, however it ended.

Both say what they are doing through ``announce`` (by default a ``madhatter:`` line on stderr):
the address served, the store, and a generated token, which is shown this once only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._pipeline import DEFAULT_ENGINE
from ..cache import CacheStore
from ._auth import setup_token
from ._extras import require_web
from ._registry import Registry
from ._store import Store
from ._stores import open_store
from ._worker import Worker

PARENT_ENV = "MADHATTER_PARENT_PID"
"""Set for the worker that ``serve(with_worker=True)`` starts: the worker stops when serve does."""
PARENT_POLL_SECONDS = 0.5

Announce = Callable[[str], None]
"""Where :func:`serve` and :func:`work` say what they are doing: one line at a time."""


def _to_stderr(line: str) -> None:
    print(f"madhatter: {line}", file=sys.stderr, flush=True)


def serve(
    targets: Sequence[str],
    *,
    broker: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    with_worker: bool = False,
    engine: str = DEFAULT_ENGINE,
    engine_options: Mapping[str, Any] | None = None,
    cache: str | os.PathLike[str] | None = None,
    keep: float | None = None,
    announce: Announce = _to_stderr,
) -> None:
    """Serve the web pages and JSON API for ``targets`` until stopped (Ctrl-C or SIGTERM).

    Args:
        targets: the pipelines that may run, as ``[NAME=]FILE_OR_MODULE``; recorded in the store,
            so workers started without targets load the same ones.
        broker: the store's URL (default: ``$MADHATTER_BROKER``, else ``sqlite:///madhatter.db``).
        host, port: where to listen.
        token: the token clients must present (default: ``$MADHATTER_TOKEN``; off loopback, one
            is generated if there is none).
        with_worker: also start one worker process on the same store, and stop it on the way out.
        engine, engine_options: that worker's engine and its options (ints, floats, booleans
            and text, as ``--engine-option`` gives them).
        cache: that worker's chunk cache (a folder or an fsspec URL; see :class:`Worker`); None
            for none. Workers started apart take their own (``madhatter worker --cache``).
        keep: if given, seconds to keep finished runs: a background thread removes runs that
            ended longer ago (with their events and results) at start, then every
            :func:`prune_interval`, until the server stops. None keeps every run.
        announce: where to say what is being served, and a generated token.
    """
    uvicorn = require_web("uvicorn")
    from ._app import create_app  # the web libraries: only once serving is asked for

    registry = Registry.load(targets)
    location = None if cache is None else CacheStore.open(cache).location  # fails here, not later
    store = open_store(broker)
    worker = None
    pruning = threading.Event()  # set: the pruner stops
    pruner = None
    try:
        registry.record(store)
        digest, new_token = setup_token(store, host, token or os.environ.get("MADHATTER_TOKEN"))
        if new_token:
            announce(f"generated this server's token (shown once): {new_token}")
        if with_worker:
            worker = _start_worker(store.url, engine, engine_options or {}, location)
        elif location is not None:
            announce(
                "--cache is for the --with-worker worker, and there is none: give each "
                "`madhatter worker` its --cache"
            )
        if keep is not None:
            pruner = threading.Thread(
                target=_prune_periodically,
                args=(store, keep, pruning, announce),
                name="madhatter-prune",
                daemon=True,
            )
            pruner.start()
        names = ", ".join(registry.names()) or "no pipelines"
        announce(f"serving {names} on http://{host}:{port} (store {store.url})")
        app = create_app(store, registry, token_digest=digest)
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        pruning.set()
        if pruner is not None:
            pruner.join(timeout=30)
        if worker is not None:
            worker.terminate()
            worker.wait()
        store.close()


PRUNE_INTERVAL_MAX = 3600.0
PRUNE_INTERVAL_MIN = 1.0


def prune_interval(keep: float) -> float:
    """How often ``serve(keep=...)`` prunes: a quarter of ``keep``, between a second and an hour."""
    return min(PRUNE_INTERVAL_MAX, max(PRUNE_INTERVAL_MIN, keep / 4))


def _prune_periodically(store: Store, keep: float, stop: threading.Event, announce: Announce) -> None:
    """``serve(keep=...)``'s background thread: prune now, then every :func:`prune_interval`,
    until ``stop`` is set. A failed prune (the store briefly unreachable) is said, and retried
    at the next interval; it never stops the server."""
    interval = prune_interval(keep)
    announce(f"removing runs that finished over {keep:g}s ago, every {interval:g}s")
    while not stop.is_set():
        try:
            removed = store.prune(keep)
        except Exception as exc:  # the server goes on; the next prune retries
            announce(f"pruning old runs failed ({type(exc).__name__}: {exc}); retrying later")
        else:
            if removed:
                announce(f"removed {removed} run{'' if removed == 1 else 's'} older than {keep:g}s")
        stop.wait(interval)


def _start_worker(
    url: str, engine: str, options: Mapping[str, Any], cache: str | None
) -> subprocess.Popen[bytes]:
    """A ``madhatter worker`` process on the store at ``url`` that stops when this process does."""
    command = [sys.executable, "-m", "madhatter", "worker", "--broker", url, "--engine", engine]
    for name, value in options.items():
        text = json.dumps(value) if isinstance(value, bool) else str(value)
        command += ["--engine-option", f"{name}={text}"]
    if cache is not None:
        command += ["--cache", cache]
    return subprocess.Popen(command, env={**os.environ, PARENT_ENV: str(os.getpid())})


def work(worker: Worker, *, announce: Announce = _to_stderr) -> None:
    """Run ``worker`` in this process until SIGTERM or Ctrl-C, which stop the runs in hand and
    give them back to the queue. A worker that follows the store loads what ``serve`` recorded
    first, and says so, or that it waits for ``serve`` to register some. Installs signal
    handlers, so it runs in the main thread (a process that :func:`serve` started calls
    :func:`follow_serve` first, so it also stops, the same way, when serve's does).
    """
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    worker.announce = announce
    worker.learn(quiet=True)  # a worker that follows the store: what serve recorded so far
    names = ", ".join(worker.registry.names())
    cache = f", chunk cache {worker.cache}" if worker.cache is not None else ""
    where = f"on {worker.engine} (store {worker.store_url}{cache})"
    if not names:
        announce(
            f"worker {worker.name} waiting {where}: no pipelines are registered on this store yet; "
            "it runs those that `madhatter serve PIPELINE...` registers"
        )
    else:
        later = ", and those serve registers later" if worker.follow else ""
        announce(f"worker {worker.name} running {names}{later} {where}")
    worker.serve(stop)


def follow_serve() -> bool:
    """For a worker process that :func:`serve` started (else a no-op): watch serve, and stop
    with it. Called first thing, before the worker loads any pipeline, so no process those start
    inherits :data:`PARENT_ENV`. False if serve is gone already (nothing to do then)."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is None:
        return True
    if os.getppid() != int(parent):
        return False
    threading.Thread(target=_stop_with_parent, args=(int(parent),), daemon=True).start()
    return True


def _stop_with_parent(parent: int) -> None:
    """Send ourselves SIGTERM (a graceful stop: the run in hand goes back to the queue) once
    the process that started us is gone, however it ended."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)
