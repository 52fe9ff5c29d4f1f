"""The ``madhatter`` command: argument parsing and presentation only.

``madhatter run FILE_OR_MODULE`` runs a pipeline and prints its result; ``madhatter graph`` shows
its DAG. User mistakes (a bad pipeline, an unknown parameter) print one clear line and exit 2; a
failed run prints the step, chunk and worker traceback and exits 1; Ctrl-C exits 130 after every
worker has been stopped.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence

from .._errors import MadhatterError, PipelineDefinitionError, RunError
from .._version import __version__
from ..engines import engine_names
from ._cache import add_cache_command
from ._docker import add_docker_command
from ._graph import add_graph_command
from ._run import add_run_command
from ._service import add_service_commands
from ._supervisor import supervised


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="madhatter",
        description="Run pipelines of plain Python functions in parallel.",
        epilog=f"engines: {', '.join(engine_names())}. Example: madhatter run examples/hello.py",
    )
    parser.add_argument("--version", action="version", version=f"madhatter {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_run_command(commands)
    add_graph_command(commands)
    add_service_commands(commands)
    add_docker_command(commands)
    add_cache_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``madhatter`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and argv is None:  # the process is the command: supervise the driver
        return supervised(functools.partial(_handle, args), engine=args.engine or "")
    return _handle(args)


def _handle(args: argparse.Namespace) -> int:
    """Run the command; turn madhatter's errors and Ctrl-C into a line and an exit code."""
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        print("madhatter: interrupted; all workers stopped", file=sys.stderr)
        return 130
    except PipelineDefinitionError as exc:
        print(f"madhatter: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except (RunError, MadhatterError) as exc:
        print(f"madhatter: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
