"""The engine kit's pure helpers, and how engines phrase a dead worker's end."""

from __future__ import annotations

import signal

import pytest

from madhatter.engines._container import _exit_cause
from madhatter.engines.kit import describe_exit


@pytest.mark.parametrize(
    ("exitcode", "phrase"),
    [
        (None, "stopped answering"),
        (3, "exited with code 3"),
        (-signal.SIGSEGV, "was killed by SIGSEGV"),
        (-signal.SIGKILL, "was killed by SIGKILL (often the out-of-memory killer)"),
    ],
)
def test_describe_exit(exitcode: int | None, phrase: str) -> None:
    assert describe_exit(exitcode) == phrase


@pytest.mark.parametrize(
    ("state", "phrase"),
    [
        ({"Running": True}, "stopped answering"),
        ({"ExitCode": 3}, "exited with code 3"),
        ({"ExitCode": 137}, "exited with code 137 (128 + SIGKILL: usually killed by that signal)"),
        ({"ExitCode": 255}, "exited with code 255"),
    ],
)
def test_a_container_s_end_keeps_docker_s_exit_code(state: dict[str, object], phrase: str) -> None:
    assert _exit_cause(state) == phrase
