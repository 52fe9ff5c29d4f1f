"""What moving a task's data costs the processes engine, counted in pickles rather than seconds.

Issue 10 found the management thread pickling a queued task's whole message for every busy
worker on every pass, only to find it too large to wait in a pipe and throw it away: 1.9 GiB of
pickles for 0.5 GiB of arrays.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import madhatter.engines.processes as processes
from madhatter.engines import Task
from madhatter.engines.processes import PREFETCH_MAX_BYTES, ProcessesEngine

TASKS = 16


def hold_and_measure(argument: bytes) -> int:
    time.sleep(0.02)  # keep the workers busy, so the engine considers prefetching the next task
    return len(argument)


def test_a_large_task_is_pickled_once_at_submit_and_once_when_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    arguments: list[int] = []
    messages: list[int] = []
    real_argument, real_message = processes.shared_memory.dumps, processes.dumps_data

    def counting_argument(value: Any, **options: Any) -> Any:
        pickled = real_argument(value, **options)
        arguments.append(len(pickled.data))
        return pickled

    def counting_message(value: Any) -> bytes:
        data = real_message(value)
        messages.append(len(data))
        return data

    monkeypatch.setattr(processes.shared_memory, "dumps", counting_argument)
    monkeypatch.setattr(processes, "dumps_data", counting_message)
    payload = bytes(4 * PREFETCH_MAX_BYTES)  # too large to wait in a busy worker's socket
    with ProcessesEngine(workers=2) as engine:
        futures = [engine.submit(Task(f"t{i}", hold_and_measure, "hold", payload)) for i in range(TASKS)]
        assert [f.result(timeout=60).value for f in futures] == [len(payload)] * TASKS
    # the function once (it goes through the same pickling), each argument once, each message once
    assert len(arguments) == TASKS + 1, f"{len(arguments)} argument pickles for {TASKS} tasks"
    assert len(messages) == TASKS, f"{len(messages)} message pickles for {TASKS} tasks"
