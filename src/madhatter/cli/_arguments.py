"""Arguments several commands share: the pipeline to load, and the engine with its options.

``--engine-option KEY=VALUE`` (repeatable) passes any option to any engine, one installed by entry
point too; values are what they look like (ints, floats, ``true``/``false``, else text).
``--address`` and ``--image``, where a command has them, are short for ``--engine-option
address=...`` and ``image=...``, and win over them.
"""

from __future__ import annotations

import argparse
import inspect
from typing import Any

from .._errors import EngineError, ParameterError
from .._params import parse_assignments, parse_value
from .._pipeline import DEFAULT_ENGINE, Pipeline
from ..engines import check_options, engine_names

SHORTHANDS = ("address", "image")
"""Engine options that have their own flag (``--address``, ``--image``) on some commands."""


def add_pipeline_command(commands: Any, name: str, *, help: str, description: str) -> Any:
    """A subcommand whose first argument is the pipeline, a ``.py`` file or a module name."""
    parser = commands.add_parser(name, help=help, description=description)
    parser.add_argument("target", metavar="FILE_OR_MODULE", help="a .py file or a module name")
    return parser


def add_engine_arguments(parser: argparse.ArgumentParser, *, whose: str = "") -> None:
    """``--engine`` and ``--engine-option``; ``whose`` says whose engine it is, if not the run's."""
    parser.add_argument(
        "--engine",
        default=DEFAULT_ENGINE,
        help=f"{whose}where tasks run: {', '.join(engine_names())} (default: {DEFAULT_ENGINE})",
    )
    parser.add_argument(
        "--engine-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the engine (e.g. memory=512m); repeatable",
    )


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine's options: the ``--engine-option`` pairs, with the shorthand flags on top.

    Checked before anything runs: a run's own settings (``workers``, ``params``, ...) are no
    engine's, and a name the engine does not take is a typo (unless it takes any)."""
    given = parse_assignments(args.engine_option, option="--engine-option")
    execute = inspect.signature(Pipeline.execute).parameters.values()
    taken = [p.name for p in execute if p.kind is p.KEYWORD_ONLY and p.name in given]
    if taken:
        flag = f"; use --{taken[0]}" if hasattr(args, taken[0]) else ""
        raise ParameterError(f"--engine-option: {taken[0]!r} is a setting of the run{flag}")
    options: dict[str, Any] = {name: parse_value(text) for name, text in given.items()}
    for name in SHORTHANDS:
        value = getattr(args, name, None)
        if value:
            options[name] = value
    try:
        check_options(args.engine, options)
    except EngineError as exc:  # a usage error here: exit 2, like a bad --param
        raise ParameterError(str(exc)) from None
    return options
