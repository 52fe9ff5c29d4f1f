"""``madhatter run``: run a pipeline with progress on stderr and the result on stdout."""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import pprint
import sys
from typing import IO, Any

from .._events import Listener
from .._params import parse_assignments
from .._pipeline import Pipeline
from ..cache import DEFAULT_FOLDER
from ..driver._context import Recorder
from ._arguments import add_engine_arguments, add_pipeline_command, engine_options
from ._progress import EventsWriter, ProgressBars, ProgressLines

HELP = "run a pipeline and print its result"
DESCRIPTION = "Run the pipeline defined in a Python file or module and print its result."
_NO_RESULT: Any = object()
"""``write_report``'s ``result`` when the run has none (it failed)."""
SKIPPED_SHOWN = 5
"""Skipped items listed on stderr after a run (the rest are counted)."""


def add_run_command(commands: Any) -> None:
    parser = add_pipeline_command(commands, "run", help=HELP, description=DESCRIPTION)
    add_engine_arguments(parser)
    parser.add_argument("--workers", type=int, help="the engine's pool size (default: per engine)")
    parser.add_argument(
        "--address",
        metavar="URL",
        help="a cluster to run on, for cluster engines (e.g. tcp://scheduler:8786 for dask); "
        "short for --engine-option address=URL",
    )
    parser.add_argument(
        "--image",
        help="the container image for every parallel step, for the docker engine; "
        "short for --engine-option image=IMAGE",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a run parameter (a step's keyword parameter); repeatable",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    parser.add_argument("--events", metavar="FILE", help="write every progress event as JSON lines")
    parser.add_argument(
        "--report",
        metavar="FILE",
        help="write the run as one self-contained HTML page (graph, timeline, per-step "
        "statistics, parameters, versions), also when the run fails",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--no-inline",
        dest="inline",
        action="store_false",
        help="always send parallel steps to the engine, even when they are too cheap to gain",
    )
    parser.add_argument(
        "--cache",
        nargs="?",
        const=True,
        metavar="DIR_OR_URL",
        help="keep step outputs and reuse those whose code, parameters and input are unchanged, "
        "so a crashed, cancelled or edited run resumes (default: .madhatter/ beside the "
        "pipeline file; or a folder, or an fsspec URL such as s3://bucket/prefix)",
    )
    parser.set_defaults(handler=run_command)


def cache_location(args: argparse.Namespace) -> str | None:
    """Where ``--cache`` keeps the cache: the folder or URL given, or ``.madhatter/`` beside the
    pipeline file (in the current folder for a module)."""
    if args.cache is None:
        return None
    if args.cache is not True:
        return str(args.cache)
    target = pathlib.Path(args.target)
    folder = target.parent if target.suffix == ".py" else pathlib.Path.cwd()
    return str(folder / DEFAULT_FOLDER)


def run_command(args: argparse.Namespace) -> int:
    pipeline = Pipeline.from_module(args.target)
    params, options = parse_assignments(args.param), engine_options(args)
    with contextlib.ExitStack() as stack:
        listeners: list[Listener] = []
        if not args.quiet:
            progress = ProgressBars if sys.stderr.isatty() else ProgressLines
            listeners.append(progress(sys.stderr))
        if args.events:
            events_file: IO[str] = stack.enter_context(open(args.events, "w", encoding="utf-8"))
            listeners.append(EventsWriter(events_file))
        recorder = Recorder()
        if args.report:
            listeners.append(recorder)
        try:
            report = pipeline.execute(
                engine=args.engine,
                workers=args.workers,
                params=params,
                listeners=listeners,
                inline=args.inline,
                cache=cache_location(args),
                **options,
            )
        except BaseException as exc:
            if args.report and recorder.events:  # a failed run's report: for its bug report
                trace = getattr(exc, "remote_traceback", None)
                write_report(args.report, recorder, quiet=args.quiet, traceback=trace)
            raise
    if args.report:
        write_report(args.report, recorder, quiet=args.quiet, result=report.result)
    for item in report.skipped[:SKIPPED_SHOWN]:
        print(f"skipped in step {item.step} (chunk {item.chunk}): {item.error}", file=sys.stderr)
    if len(report.skipped) > SKIPPED_SHOWN:
        print(f"... and {len(report.skipped) - SKIPPED_SHOWN} more skipped", file=sys.stderr)
    print_result(report.result, as_json=args.json)
    return 0


def write_report(
    path: str,
    recorder: Recorder,
    *,
    quiet: bool,
    result: Any = _NO_RESULT,
    traceback: str | None = None,
) -> None:
    """Write the run's HTML report from the events ``recorder`` kept (see docs/reports.md): with
    the result's preview when it succeeded, the worker's traceback when a step failed."""
    from ..report import render_events_html, result_preview

    preview = None if result is _NO_RESULT else result_preview(result)
    text = render_events_html(
        recorder.events, dropped=recorder.dropped, result_preview=preview, traceback=traceback
    )
    pathlib.Path(path).write_text(text, encoding="utf-8")
    if not quiet:
        print(f"report written to {path}", file=sys.stderr)


def print_result(result: Any, *, as_json: bool, stream: IO[str] | None = None) -> None:
    """Print the result: JSON when asked, else pretty-printed Python."""
    stream = stream or sys.stdout
    if as_json:
        json.dump(result, stream, default=_jsonable, indent=2 if stream.isatty() else None)
        stream.write("\n")
    else:
        pprint.pprint(result, stream=stream, sort_dicts=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset, range)) or hasattr(value, "__iter__"):
        return list(value)
    return repr(value)
