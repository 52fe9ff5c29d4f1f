"""The pieces of ``madhatter run``'s supervisor that need no process to die: the shared page
the driver writes, and how a death is put into words (the real deaths: tests/cli/test_driver_crash.py).
"""

from __future__ import annotations

import mmap
import pathlib
import signal
import threading
from collections.abc import Iterator

import pytest

from madhatter.cli._supervisor import death_cause, death_message, oom_kills
from madhatter.driver import _inline_watch as inline_watch


@pytest.fixture
def page() -> Iterator[mmap.mmap]:
    shared = inline_watch.share()
    yield shared
    inline_watch._page = None  # library use again: no supervisor asked


def test_the_page_records_what_runs_and_whether_the_driver_finished(page: mmap.mmap) -> None:
    assert inline_watch.read(page) == (False, [])
    slot = inline_watch.enter("parse\tfiles", 5)  # a tab in a name does not break the record
    finished, running = inline_watch.read(page)
    assert not finished
    assert [(r.step, r.chunk) for r in running] == [("parse\tfiles", 5)]
    inline_watch.leave(slot)
    inline_watch.finished()
    assert inline_watch.read(page) == (True, [])


def test_the_probe_thread_has_a_slot_of_its_own(page: mmap.mmap) -> None:
    seen = []
    main = inline_watch.enter("a", 1)
    task = inline_watch.watched(lambda _: seen.append(inline_watch.read(page)[1]), "b", 0)
    thread = threading.Thread(target=task, args=(None,))
    thread.start()
    thread.join()
    assert [(r.step, r.chunk) for r in seen[0]] == [("a", 1), ("b", 0)]
    assert [r.step for r in inline_watch.read(page)[1]] == ["a"]
    inline_watch.leave(main)


def test_without_a_supervisor_nothing_is_recorded() -> None:
    assert inline_watch._page is None
    assert inline_watch.enter("a", 0) == -1
    inline_watch.leave(-1)
    function = len
    assert inline_watch.watched(function, "a", 0) is function


@pytest.mark.parametrize(
    ("code", "before", "after", "cause"),
    [
        (3, None, None, "exit code 3"),
        (-signal.SIGSEGV, 0, 0, "killed by SIGSEGV"),
        (-signal.SIGABRT, None, None, "killed by SIGABRT"),
        (-signal.SIGKILL, 2, 3, "out of memory: killed by the kernel's OOM killer"),
        (-signal.SIGKILL, 2, 2, "killed by SIGKILL"),
        (-signal.SIGKILL, None, None, "killed by SIGKILL (possibly the out-of-memory killer)"),
    ],
)
def test_death_causes(code: int, before: int | None, after: int | None, cause: str) -> None:
    assert death_cause(code, before, after) == cause


def test_oom_kills_come_from_the_cgroup_memory_events(tmp_path: pathlib.Path) -> None:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text("0::/user.slice/run-1.scope\n")
    group = tmp_path / "sys/fs/cgroup/user.slice/run-1.scope"
    group.mkdir(parents=True)
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n")
    assert oom_kills(tmp_path) == 2
    (group / "memory.events").unlink()
    assert oom_kills(tmp_path) is None  # cgroup v1, or no memory controller: cannot tell


def test_the_message_says_how_to_isolate_the_step() -> None:
    running = [inline_watch.Running(1, "killer_step", 5)]
    line = death_message("exit code 3", running)
    assert line.startswith("WorkerLost: the driver died running step 'killer_step' chunk 5")
    assert "--no-inline" in line
    assert "--engine processes" in death_message("exit code 3", running, "threads")
    assert "outside the chunks" in death_message("killed by SIGSEGV", [])
