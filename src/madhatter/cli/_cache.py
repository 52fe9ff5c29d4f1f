"""``madhatter cache ls|explain|clear``: look into the chunk cache and tidy it.

Each command takes ``--cache DIR_OR_URL`` (default: ``.madhatter/`` in the current folder, where
``madhatter run FILE --cache`` keeps it when FILE is here).
"""

from __future__ import annotations

import argparse
import re
import time
from typing import Any

from .._errors import ParameterError
from .._params import parse_assignments, resolve
from .._pipeline import Pipeline
from ..cache import DEFAULT_FOLDER, CacheStore
from ..driver import explain_cache_miss

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def add_cache_command(commands: Any) -> None:
    parser = commands.add_parser(
        "cache",
        help="list, explain or clear the chunk cache",
        description="Look into the chunk cache that `madhatter run --cache` keeps, and tidy it.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("ls", help="what is cached, per step")
    explain = actions.add_parser("explain", help="why a step would not be found in the cache")
    explain.add_argument("target", metavar="FILE_OR_MODULE", help="the pipeline")
    explain.add_argument("step", metavar="STEP", help="the step's name")
    explain.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    clear = actions.add_parser("clear", help="remove cached results")
    clear.add_argument("--step", help="only this step's")
    clear.add_argument(
        "--older-than", metavar="AGE", help="only those older than AGE: 30s, 15m, 12h, 7d, 2w"
    )
    for action in (listing, explain, clear):
        action.add_argument(
            "--cache",
            default=DEFAULT_FOLDER,
            metavar="DIR_OR_URL",
            help=f"the cache (default: {DEFAULT_FOLDER} here)",
        )
    listing.set_defaults(handler=list_command)
    explain.set_defaults(handler=explain_command)
    clear.set_defaults(handler=clear_command)


def list_command(args: argparse.Namespace) -> int:
    store = CacheStore.open(args.cache)
    rows = store.summary()
    if not rows:
        print(f"the cache at {store.location} is empty")
        return 0
    print(f"{'step':<24} {'fingerprint':<12} {'items':>9} {'entries':>8} {'size':>10}  written")
    for row in rows:
        written = time.strftime("%Y-%m-%d %H:%M", time.localtime(row.newest)) if row.newest else "-"
        print(
            f"{row.step:<24} {row.fingerprint[:12]:<12} {row.items:>9} {row.entries:>8} "
            f"{_size(row.bytes):>10}  {written}"
        )
    return 0


def explain_command(args: argparse.Namespace) -> int:
    pipeline = Pipeline.from_module(args.target)
    if args.step not in pipeline.graph.steps:
        names = ", ".join(pipeline.graph.steps)
        raise ParameterError(f"no step named {args.step!r}; this pipeline's steps: {names}")
    params = resolve(pipeline.params, parse_assignments(args.param))
    store = CacheStore.open(args.cache)
    for line in explain_cache_miss(store, pipeline.graph, args.step, params):
        print(line)
    return 0


def clear_command(args: argparse.Namespace) -> int:
    store = CacheStore.open(args.cache)
    older_than = _age(args.older_than) if args.older_than else None
    removed = store.clear(args.step, older_than=older_than)
    print(f"removed {removed} cache entr{'y' if removed == 1 else 'ies'} from {store.location}")
    return 0


def _age(text: str) -> float:
    match = DURATION.match(text.strip())
    if match is None:
        raise ParameterError(f"--older-than {text!r}: give a number and a unit, e.g. 30m, 12h, 7d")
    return float(match[1]) * SECONDS[match[2]]


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"
