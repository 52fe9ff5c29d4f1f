"""The bookkeeping of poison-item bisection and of OOM-aware concurrency (driver/_bisect.py,
driver/_memory.py), and the item that WorkerLost and TaskTimeout now carry."""

from __future__ import annotations

import pickle

from madhatter import TaskTimeout, WorkerLost
from madhatter.driver._bisect import Bisection, halves, may_bisect
from madhatter.driver._memory import killed_for_memory, lowered
from madhatter.engines import TaskLost, TaskTimedOut


def test_halves_cover_the_part_without_overlap() -> None:
    assert halves((0, 1000)) == ((0, 500), (500, 1000))
    assert halves((4, 7)) == ((4, 6), (6, 7))
    assert halves((8, 10)) == ((8, 9), (9, 10))


def test_a_bisection_reassembles_outputs_in_input_order_without_the_failing_item() -> None:
    bisection = Bisection(list(range(8)))
    left, right = bisection.split(None)  # the whole chunk failed
    assert (left, right) == ((0, 4), (4, 8))
    assert not bisection.finished_part(right, [40, 50, 60, 70])  # the good half, first
    first, second = bisection.split(left)  # the bad half failed again
    third, fourth = bisection.split(first)
    assert not bisection.finished_part(fourth, [10])
    assert not bisection.finished_part(second, [20, 30])
    assert bisection.finished_part(third, [])  # item 0 left out: every part is in
    assert bisection.outputs() == [10, 20, 30, 40, 50, 60, 70]


def test_only_lost_workers_and_timeouts_are_bisected() -> None:
    assert may_bisect(TaskLost("killed by SIGSEGV"))
    assert may_bisect(TaskTimedOut(1.0))
    assert not may_bisect(ValueError("a step that raised names its item itself"))


def test_only_a_sure_oom_kill_lowers_the_concurrency() -> None:
    assert killed_for_memory(TaskLost("container was OOMKilled: it used more than 64m"))
    assert killed_for_memory(TaskLost("worker 3 was killed by SIGKILL: out of memory"))
    assert not killed_for_memory(TaskLost("was killed by SIGKILL (often the out-of-memory killer)"))
    assert not killed_for_memory(TaskTimedOut(1.0))


def test_several_kills_from_one_shortage_halve_the_concurrency_once() -> None:
    assert lowered(8, launched_at=8) == 4
    assert lowered(4, launched_at=8) == 4  # a second chunk launched at 8, killed after the first
    assert lowered(4, launched_at=4) == 2
    assert lowered(1, launched_at=1) == 1


def test_the_named_item_survives_pickling() -> None:
    lost = pickle.loads(pickle.dumps(WorkerLost("step", 3, "killed by SIGSEGV", 613, "613")))
    assert (lost.item, lost.item_preview) == (613, "613")
    assert "on item 613: 613" in str(lost)
    late = pickle.loads(pickle.dumps(TaskTimeout("step", 2, 1.0, 5, "'x'")))
    assert str(late) == "step 'step' chunk 2 ran longer than its timeout of 1.0s, on item 5 alone: 'x'"
