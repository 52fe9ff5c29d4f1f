"""``madhatter serve``, ``worker``, ``submit``, ``runs`` and ``status``: the service from a terminal.

Only argument parsing and printing live here; the service itself is ``madhatter.service``, whose
public face these commands call. It is imported when one of them runs, so ``import madhatter`` and
``madhatter run`` never load it; importing it loads no web library either (``serve`` does, when it
starts), so ``submit``, ``runs`` and ``status`` use the standard library only.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
from typing import Any

from .._errors import ParameterError
from .._params import parse_assignments
from ._arguments import add_engine_arguments, engine_options
from ._run import print_result

BROKER_HELP = "the run store: sqlite:///FILE (default sqlite:///madhatter.db) or redis://HOST:PORT/DB"


def _add_cache_argument(parser: argparse.ArgumentParser, whose: str) -> None:
    parser.add_argument(
        "--cache",
        metavar="DIR_OR_URL",
        help=f"{whose}keep step outputs in this chunk cache and reuse those whose code, parameters "
        "and input are unchanged, so a re-run of a failed or cancelled run resumes where it "
        "stopped: a folder or an fsspec URL (s3://bucket/prefix) shared by all workers "
        "(default: no cache)",
    )


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
        "--keep",
        metavar="AGE",
        help="remove finished runs (their events and results too) once they ended longer ago "
        "than AGE: 30s, 15m, 12h, 7d, 2w; checked at start, then every AGE/4, at most hourly "
        "(default: keep every run)",
    )
    serve.add_argument(
        "--with-worker",
        action="store_true",
        help="also start one worker process on the same store (a first look on one machine)",
    )
    add_engine_arguments(serve, whose="the --with-worker worker's engine: ")
    _add_cache_argument(serve, "the --with-worker worker's cache: ")
    serve.set_defaults(handler=serve_command)

    worker = commands.add_parser(
        "worker",
        help="execute queued runs",
        description="Take runs off the store's queue and execute them. Without PIPELINE arguments, "
        "runs the pipelines that `madhatter serve` registered in the store, and those it registers "
        "later (started first, it waits for them).",
    )
    worker.add_argument("targets", nargs="*", metavar="PIPELINE", help="[NAME=]FILE_OR_MODULE to run")
    worker.add_argument("--broker", metavar="URL", help=BROKER_HELP)
    worker.add_argument("--concurrency", type=int, default=1, help="runs executed at once (default 1)")
    add_engine_arguments(worker)
    worker.add_argument("--workers", type=int, help="each run's engine pool size")
    worker.add_argument(
        "--address",
        metavar="URL",
        help="the cluster, for cluster engines; short for --engine-option address=URL",
    )
    worker.add_argument(
        "--lease", type=float, default=30.0, metavar="SECONDS", help="lease length (default 30)"
    )
    worker.add_argument(
        "--poll", type=float, default=0.1, metavar="SECONDS", help="idle wait between queue checks"
    )
    worker.add_argument("--name", help="this worker's name on runs (default host:pid)")
    _add_cache_argument(worker, "")
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

    runs = commands.add_parser(
        "runs",
        parents=[client_options],
        help="list a server's runs, or prune old ones",
        description="Without ACTION, list a server's runs (over its API). `runs prune --older-than "
        "AGE` removes, from the store itself, runs that finished longer ago than AGE, with their "
        "events and results; queued and running runs are never removed.",
    )
    runs.add_argument(
        "action", nargs="?", choices=["prune"], metavar="ACTION", help="prune: remove old runs"
    )
    runs.add_argument(
        "--older-than", metavar="AGE", help="prune: runs finished longer ago than 30s, 15m, 12h, 7d, 2w"
    )
    runs.add_argument("--broker", metavar="URL", help=f"prune: {BROKER_HELP}")
    runs.add_argument("--pipeline", help="only this pipeline's runs")
    runs.add_argument("--status", help="only runs with this status")
    runs.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    runs.set_defaults(handler=runs_command)

    status = commands.add_parser("status", parents=[client_options], help="show one run")
    status.add_argument("run_id", metavar="RUN", help="the run's id")
    status.set_defaults(handler=status_command)


def serve_command(args: argparse.Namespace) -> int:
    from ..service import serve

    keep = _age(args.keep, "--keep") if args.keep else None
    serve(
        args.targets,
        broker=args.broker,
        host=args.host,
        port=args.port,
        token=args.token,
        with_worker=args.with_worker,
        engine=args.engine,
        engine_options=engine_options(args),
        cache=args.cache,
        keep=keep,
    )
    return 0


def worker_command(args: argparse.Namespace) -> int:
    from ..service import Registry, Worker, follow_serve, store_url, work

    if not follow_serve():
        return 0  # started by a serve that is gone already
    worker = Worker(
        store_url(args.broker),
        Registry.load(args.targets),
        name=args.name,
        concurrency=args.concurrency,
        engine=args.engine,
        workers=args.workers,
        engine_options=engine_options(args),
        lease_seconds=args.lease,
        poll_seconds=args.poll,
        follow=not args.targets,  # serve's pipelines, those it records later included
        cache=args.cache,
    )
    work(worker)
    return 0


def _client(args: argparse.Namespace) -> Any:
    from ..service import Client

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


def _age(text: str, flag: str) -> float:
    from ._cache import _age as age

    try:
        return age(text)
    except ParameterError as exc:
        raise ParameterError(str(exc).replace("--older-than", flag, 1)) from None


def runs_command(args: argparse.Namespace) -> int:
    if args.action == "prune":
        return prune_command(args)
    if args.older_than or args.broker:
        raise ParameterError("--older-than and --broker are for `madhatter runs prune`")
    page = _client(args).runs(pipeline=args.pipeline, status=args.status, limit=args.limit)
    print(f"{'RUN':<18}{'PIPELINE':<20}{'STATUS':<11}{'ITEMS':>7}  SECONDS")
    for run in page["runs"]:
        seconds = f"{run['seconds']:.2f}" if run["seconds"] is not None else ""
        print(f"{run['id']:<18}{run['pipeline']:<20}{run['status']:<11}{run['items']:>7}  {seconds}")
    if page["total"] > len(page["runs"]):
        print(f"({page['total'] - len(page['runs'])} more)", file=sys.stderr)
    return 0


def prune_command(args: argparse.Namespace) -> int:
    from ..service import open_store

    if not args.older_than:
        raise ParameterError("runs prune: give --older-than AGE, e.g. 30d")
    older_than = _age(args.older_than, "--older-than")
    with open_store(args.broker) as store:
        removed = store.prune(older_than)
        print(f"removed {removed} run{'' if removed == 1 else 's'} from {store.url}")
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
