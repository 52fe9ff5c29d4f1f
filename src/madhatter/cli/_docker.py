"""``madhatter docker prune``: remove the containers a crashed or killed driver left behind."""

from __future__ import annotations

import argparse
from typing import Any


def add_docker_command(commands: Any) -> None:
    parser = commands.add_parser(
        "docker",
        help="manage the docker engine's containers",
        description="Manage the containers of madhatter's docker engine.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    prune = actions.add_parser(
        "prune",
        help="remove containers left behind by a driver that crashed",
        description=(
            "Remove the stopped containers that carry madhatter's label. A run removes its own "
            "containers; only a driver that was killed or crashed leaves any behind."
        ),
    )
    prune.add_argument(
        "--running",
        action="store_true",
        help="also stop and remove running ones (this stops runs in progress)",
    )
    prune.set_defaults(handler=prune_command)


def prune_command(args: argparse.Namespace) -> int:
    from ..engines.docker import prune

    removed = prune(include_running=args.running)
    for container in removed:
        print(container)
    print(f"removed {len(removed)} container(s)")
    return 0
