"""Engines by name: ``register_engine`` with a class (even one defined in a function) or a lazy
``"module:Class"`` string, and the errors for a name that is unknown or not an engine."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

import pytest

import madhatter
import madhatter.engines
from madhatter import EngineError, Pipeline, UnknownEngineError, depends, parallel, preprocess
from madhatter.engines import (
    Engine,
    EngineTraits,
    Task,
    TaskResult,
    _registry,
    engine_class,
    get_engine,
    register_engine,
)


@pytest.fixture(autouse=True)
def _registry_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test registers into a copy, and sees no engine installed by entry point: the names
    it checks are the built-in ones and its own."""
    monkeypatch.setattr(_registry, "_registered", dict(_registry._registered))
    monkeypatch.setattr(_registry, "_entry_points", dict)


def make_engine_class() -> type[Engine]:
    """An engine class defined in a function: ``make_engine_class.<locals>.Local`` cannot be
    imported by its qualified name, so the registry must keep the class itself."""

    class Local(Engine):
        name = "local-test"
        traits = EngineTraits(ships_data=False, runs_inline=True)
        created: list[Local] = []

        def __init__(self, workers: int | None = None, *, offset: int = 0) -> None:
            self.offset = offset
            self.submitted = 0
            self.closed = False
            Local.created.append(self)

        @property
        def workers(self) -> int:
            return 1

        def prepare(self, resources: Mapping[str, Any]) -> EngineTraits:
            return self.traits

        def submit(self, task: Task) -> Future[TaskResult]:
            self.submitted += 1
            future: Future[TaskResult] = Future()
            value = task.function(task.argument)
            future.set_result(TaskResult(value, worker="local", started=0.0, seconds=0.0))
            return future

        def shutdown(self, *, cancel_pending: bool) -> None:
            self.closed = True

    return Local


@preprocess
def three() -> list[int]:
    return [1, 2, 3]


@depends(three)
@parallel.map(chunk_by=1)
def plus_one(x: int) -> int:
    return x + 1


def test_a_class_defined_in_a_function_is_registered_and_runs_by_name() -> None:
    local = make_engine_class()
    assert "<locals>" in local.__qualname__
    register_engine("local-test", local)
    assert engine_class("local-test") is local
    assert "local-test" in madhatter.engines.engine_names()
    assert madhatter.run(plus_one, engine="local-test", inline=False) == [2, 3, 4]
    report = Pipeline([plus_one]).execute(engine="local-test", inline=False, offset=5)
    assert report.result == [2, 3, 4]
    created: list[Any] = local.created  # type: ignore[attr-defined]
    assert [engine.offset for engine in created] == [0, 5]  # options reach the constructor
    assert all(engine.submitted == 3 and engine.closed for engine in created)


def test_options_are_checked_against_a_registered_class() -> None:
    register_engine("local-test", make_engine_class())
    assert get_engine("local-test", offset=2).offset == 2  # type: ignore[attr-defined]
    with pytest.raises(
        EngineError, match=r"'local-test' engine has no option 'ofset' \(its options: offset\)"
    ):
        get_engine("local-test", ofset=2)


def test_a_lazy_string_is_imported_when_first_asked_for() -> None:
    register_engine("also-serial", "madhatter.engines.serial:SerialEngine")
    from madhatter.engines.serial import SerialEngine

    assert engine_class("also-serial") is SerialEngine
    assert madhatter.run(plus_one, engine="also-serial") == [2, 3, 4]


def test_registering_a_name_again_replaces_it() -> None:
    first, second = make_engine_class(), make_engine_class()
    register_engine("local-test", first)
    register_engine("local-test", second)
    assert engine_class("local-test") is second
    assert madhatter.engines.engine_names().count("local-test") == 1


def test_an_unknown_name_lists_the_known_ones() -> None:
    register_engine("local-test", make_engine_class())
    names = madhatter.engines.engine_names()
    assert names == tuple(sorted(names))
    assert {"serial", "threads", "processes", "local-test"} <= set(names)
    with pytest.raises(UnknownEngineError, match=r"no engine named 'warp'; choose one of: ") as caught:
        engine_class("warp")
    assert str(caught.value).endswith(", ".join(names))
    with pytest.raises(UnknownEngineError, match="no engine named 'warp'"):
        madhatter.run(plus_one, engine="warp")


class NotAnEngine:
    pass


@pytest.mark.parametrize(
    "target",
    [NotAnEngine, "collections:OrderedDict", "madhatter.engines.serial:NoSuchClass"],
    ids=["class", "string", "missing-attribute"],
)
def test_a_target_that_is_not_an_engine_class_is_a_clear_error(target: Any) -> None:
    register_engine("broken", target)
    with pytest.raises(
        UnknownEngineError, match=r"engine 'broken' points at .*, which is not an Engine class"
    ):
        engine_class("broken")
    with pytest.raises(UnknownEngineError, match="which is not an Engine class"):
        get_engine("broken")
