"""``madhatter serve``, ``worker``, ``submit``, ``runs`` and ``status``: the service from a terminal.

Only argument parsing and printing live here; the service itself is ``madhatter.service``, imported
when one of these commands runs, so ``import madhatter`` and ``madhatter run`` never load the web
libraries. ``submit``, ``runs`` and ``status`` use the standard library only.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from .._params import parse_assignments
from .._pipeline import DEFAULT_ENGINE
from ..engines import engine_names
from ._run import print_result

PARENT_POLL_SECONDS = 0.5
PARENT_ENV = "MADHATTER_PARENT_PID"
"""Set for the worker that ``serve --with-worker`` starts: the worker stops when serve does."""
BROKER_HELP = "the run store: sqlite:///FILE (default sqlite:///madhatter.db) or redis://HOST:PORT/DB"


def add_service_commands(commands: Any) -> None:
    """Register the service's commands on the ``madhatter`` parser."""
    serve = commands.add_parser(
        "serve",
        help="the web interface and JSON API that queue runs",
        description="Serve the web app and JSON API for the given pipelines.",
    )
    serve.add_argument(
        "targets", nargs="*", metavar="PIPELINE", help="[NAME=]FILE_OR_MODULE to register"
    )
    serve.add_argument("--broker", metavar="URL", help=BROKER_HELP)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--token", help="the token clients must present (default: $MADHATTER_TOKEN)")
    serve.add_argument(
        "--with-worker",
        action="store_true",
        help="also start one worker process on the same store (a first look on one machine)",
    )
    serve.add_argument("--engine", default=DEFAULT_ENGINE, help="the --with-worker worker's engine")
    serve.set_defaults(handler=serve_command)

    worker = commands.add_parser(
        "worker",
        help="execute queued runs",
        description="Take runs off the store's queue and execute them. Without PIPELINE arguments, "
        "loads the pipelines that `madhatter serve` registered in the store.",
    )
    worker.add_argument("targets", nargs="*", metavar="PIPELINE", help="[NAME=]FILE_OR_MODULE to run")
    worker.add_argument("--broker", metavar="URL", help=BROKER_HELP)
    worker.add_argument("--concurrency", type=int, default=1, help="runs executed at once (default 1)")
    worker.add_argument(
        "--engine",
        default=DEFAULT_ENGINE,
        help=f"{', '.join(engine_names())} (default {DEFAULT_ENGINE})",
    )
    worker.add_argument("--workers", type=int, help="each run's engine pool size")
    worker.add_argument("--address", metavar="URL", help="the cluster, for cluster engines")
    worker.add_argument(
        "--lease", type=float, default=30.0, metavar="SECONDS", help="lease length (default 30)"
    )
    worker.add_argument(
        "--poll", type=float, default=0.1, metavar="SECONDS", help="idle wait between queue checks"
    )
    worker.add_argument("--name", help="this worker's name on runs (default host:pid)")
    worker.set_defaults(handler=worker_command)

    client_options = argparse.ArgumentParser(add_help=False)
    client_options.add_argument(
        "--url", help="the server (default $MADHATTER_URL, else http://127.0.0.1:8000)"
    )
    client_options.add_argument("--token", help="the server's token (default $MADHATTER_TOKEN)")

    submit = commands.add_parser(
        "submit", parents=[client_options], help="queue a run on a server", description="Queue a run."
    )
    submit.add_argument("pipeline", metavar="PIPELINE", help="a registered pipeline's name")
    submit.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="repeatable")
    submit.add_argument("--wait", action="store_true", help="wait for the run and print its result")
    submit.add_argument("--json", action="store_true", help="print the result as JSON")
    submit.set_defaults(handler=submit_command)

    runs = commands.add_parser("runs", parents=[client_options], help="list a server's runs")
    runs.add_argument("--pipeline", help="only this pipeline's runs")
    runs.add_argument("--status", help="only runs with this status")
    runs.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    runs.set_defaults(handler=runs_command)

    status = commands.add_parser("status", parents=[client_options], help="show one run")
    status.add_argument("run_id", metavar="RUN", help="the run's id")
    status.set_defaults(handler=status_command)


def serve_command(args: argparse.Namespace) -> int:
    from ..service._auth import setup_token
    from ..service._extras import require_web
    from ..service._registry import PIPELINES_META, Registry
    from ..service._store import open_store

    uvicorn = require_web("uvicorn")
    from ..service._app import create_app

    registry = Registry.load(args.targets)
    store = open_store(args.broker)
    store.set_meta(PIPELINES_META, json.dumps(registry.targets))
    digest, new_token = setup_token(store, args.host, args.token or os.environ.get("MADHATTER_TOKEN"))
    if new_token:
        print(f"madhatter: generated this server's token (shown once): {new_token}", file=sys.stderr)
    worker = None
    if args.with_worker:
        command = [
            sys.executable,
            "-m",
            "madhatter",
            "worker",
            "--broker",
            store.url,
            "--engine",
            args.engine,
        ]
        # uvicorn re-raises SIGTERM once it has stopped, which ends this process before any
        # `finally` of ours: the worker must stop with us by itself (see worker_command)
        worker = subprocess.Popen(command, env={**os.environ, PARENT_ENV: str(os.getpid())})
    print(
        f"madhatter: serving {', '.join(registry.names()) or 'no pipelines'} on "
        f"http://{args.host}:{args.port} (store {store.url})",
        file=sys.stderr,
    )
    try:
        app = create_app(store, registry, token_digest=digest)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait()
        store.close()
    return 0


def _stop_with_parent(parent: int) -> None:
    """Send ourselves SIGTERM (a graceful stop: the run in hand goes back to the queue) once
    the process that started us is gone, however it ended."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)


def worker_command(args: argparse.Namespace) -> int:
    parent = os.environ.pop(PARENT_ENV, None)
    if parent is not None:  # started by `serve --with-worker`: stop (gracefully) when it does
        if os.getppid() != int(parent):
            return 0  # it is gone already
        threading.Thread(target=_stop_with_parent, args=(int(parent),), daemon=True).start()
    from ..service._registry import PIPELINES_META, Registry
    from ..service._store import open_store
    from ..service._worker import Worker

    store = open_store(args.broker)
    targets = args.targets
    if not targets:
        recorded = store.get_meta(PIPELINES_META)
        targets = json.loads(recorded) if recorded else []
    url = store.url
    store.close()
    if not targets:
        print(
            "madhatter: no pipelines: give PIPELINE files or modules, or start `madhatter serve "
            "PIPELINE...` on this store first",
            file=sys.stderr,
        )
        return 2
    registry = Registry.load(targets)
    worker = Worker(
        url,
        registry,
        name=args.name,
        concurrency=args.concurrency,
        engine=args.engine,
        workers=args.workers,
        engine_options={"address": args.address} if args.address else None,
        lease_seconds=args.lease,
        poll_seconds=args.poll,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(
        f"madhatter: worker {worker.name} running {', '.join(registry.names())} on {args.engine} "
        f"(store {url})",
        file=sys.stderr,
        flush=True,
    )
    worker.serve(stop)
    return 0


def _client(args: argparse.Namespace) -> Any:
    from ..service._client import Client

    return Client(args.url, args.token)


def submit_command(args: argparse.Namespace) -> int:
    client = _client(args)
    run = client.submit(args.pipeline, parse_assignments(args.param), submitted_by=_who())
    if not args.wait:
        print(run["id"])
        return 0
    print(f"run {run['id']} queued", file=sys.stderr)
    run = client.wait(run["id"])
    return _print_outcome(client, run, as_json=args.json)


def _who() -> str:
    """``user@host``, shown as who submitted a run (for people, not for access control)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "someone"
    return f"{user}@{socket.gethostname()}"[:100]


def _print_outcome(client: Any, run: dict[str, Any], *, as_json: bool) -> int:
    if run["status"] == "succeeded":
        content_type, data = client.result(run["id"])
        if content_type.startswith("application/json"):
            print_result(json.loads(data), as_json=as_json)
        else:
            print(run["result_preview"])
            print(f"(a pickled result: GET /api/runs/{run['id']}/result downloads it)", file=sys.stderr)
        return 0
    error = run.get("error") or {}
    where = f" in step {error['step']!r}, chunk {error['chunk']}" if error.get("step") else ""
    what = f"{error.get('type')}: {error.get('message')}"
    print(f"madhatter: run {run['id']} {run['status']}{where}: {what}", file=sys.stderr)
    if error.get("traceback"):
        print(error["traceback"], file=sys.stderr)
    return 1


def runs_command(args: argparse.Namespace) -> int:
    page = _client(args).runs(pipeline=args.pipeline, status=args.status, limit=args.limit)
    print(f"{'RUN':<18}{'PIPELINE':<20}{'STATUS':<11}{'ITEMS':>7}  SECONDS")
    for run in page["runs"]:
        seconds = f"{run['seconds']:.2f}" if run["seconds"] is not None else ""
        print(f"{run['id']:<18}{run['pipeline']:<20}{run['status']:<11}{run['items']:>7}  {seconds}")
    if page["total"] > len(page["runs"]):
        print(f"({page['total'] - len(page['runs'])} more)", file=sys.stderr)
    return 0


def status_command(args: argparse.Namespace) -> int:
    run = _client(args).run(args.run_id)
    for key in ("id", "pipeline", "status", "params", "worker", "attempt", "items", "seconds"):
        print(f"{key}: {json.dumps(run[key]) if key == 'params' else run[key]}")
    if run.get("error"):
        error = run["error"]
        print(f"error: {error['type']}: {error['message']}")
        if error.get("step"):
            print(f"step: {error['step']} (chunk {error['chunk']})")
    return 0 if run["status"] != "failed" else 1
