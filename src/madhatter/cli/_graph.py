"""``madhatter graph``: show a pipeline's DAG as text, Graphviz DOT, Mermaid or SVG."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._pipeline import Pipeline
from ..graph import RENDERERS, render, render_text
from ._arguments import add_pipeline_command

HELP = "show a pipeline's steps and how they connect"
DESCRIPTION = "Print a pipeline's DAG as text (default), DOT, Mermaid or SVG."


def add_graph_command(commands: Any) -> None:
    parser = add_pipeline_command(commands, "graph", help=HELP, description=DESCRIPTION)
    parser.add_argument(
        "--format", "-f", default="text", choices=sorted(RENDERERS), help="output format"
    )
    parser.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    parser.set_defaults(handler=graph_command)


def graph_command(args: argparse.Namespace) -> int:
    pipeline = Pipeline.from_module(args.target)
    if args.format == "text":
        text = render_text(pipeline.graph, plan=pipeline.plan())
    else:
        text = render(pipeline.graph, args.format)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text if text.endswith("\n") else text + "\n")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0
