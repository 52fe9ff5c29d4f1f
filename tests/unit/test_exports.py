"""The public surface is declared once (``__all__``), and errors are structured and picklable."""

from __future__ import annotations

import importlib.metadata
import inspect
import pickle

import pytest

import madhatter
import madhatter.engines
import madhatter.testing
from madhatter import (
    CycleError,
    MadhatterError,
    MissingExtraError,
    ParameterError,
    PipelineDefinitionError,
    RunCancelled,
    RunError,
    ShippingError,
    StepFailed,
    TaskTimeout,
    UnknownEngineError,
    WorkerLost,
)


def test_public_names_equal_all() -> None:
    public = {
        name
        for name, value in vars(madhatter).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public | {"__version__"} == set(madhatter.__all__)
    assert len(madhatter.__all__) == len(set(madhatter.__all__))


@pytest.mark.parametrize(
    "module", [madhatter, madhatter.engines, madhatter.testing], ids=lambda m: m.__name__
)
def test_every_name_in_all_exists(module: object) -> None:
    missing = [name for name in module.__all__ if not hasattr(module, name)]  # type: ignore[attr-defined]
    assert missing == []


def test_exported_objects_say_madhatter_as_module() -> None:
    wrong = {
        name: getattr(madhatter, name).__module__
        for name in madhatter.__all__
        if name != "__version__" and getattr(madhatter, name).__module__ != "madhatter"
    }
    assert wrong == {}
    assert repr(CycleError).startswith("<class 'madhatter.CycleError'")


def test_version_matches_the_installed_distribution() -> None:
    assert madhatter.__version__ == importlib.metadata.version("madhatter")


def test_the_error_tree() -> None:
    tree = {
        PipelineDefinitionError: MadhatterError,
        CycleError: PipelineDefinitionError,
        ShippingError: PipelineDefinitionError,
        ParameterError: PipelineDefinitionError,
        UnknownEngineError: MadhatterError,
        MissingExtraError: MadhatterError,
        RunError: MadhatterError,
        StepFailed: RunError,
        WorkerLost: RunError,
        TaskTimeout: RunError,
        RunCancelled: RunError,
    }
    for cls, parent in tree.items():
        assert cls.__bases__[0] is parent, cls
    assert issubclass(UnknownEngineError, ValueError)
    assert issubclass(MissingExtraError, ImportError)
    assert not issubclass(RunError, PipelineDefinitionError)


ERRORS = [
    CycleError(["load", "clean", "score"]),
    ShippingError("score", "its function cannot be pickled (TypeError: lock)", "processes"),
    StepFailed("score", 3, "[1, 2]", 'Traceback ...\n  File "x.py", line 4, in score\nKeyError: 1\n'),
    WorkerLost("score", 7, "worker pid-12 exited with code 3"),
    TaskTimeout("score", 2, 1.5),
    RunCancelled("cancel requested"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_pickle_unchanged(error: Exception) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert copy.args == error.args
    assert vars(copy) == vars(error)
    assert str(copy) == str(error)


def test_step_failed_keeps_its_cause_across_pickling() -> None:
    error = StepFailed("score", 0, "[1]", "traceback text")
    error.__cause__ = KeyError("missing")
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy.__cause__, KeyError)
    assert copy.__cause__.args == ("missing",)


def test_error_messages_name_the_step_and_the_fix() -> None:
    messages = [str(error) for error in ERRORS]
    assert messages[0] == (
        "steps form a cycle: load -> clean -> score -> load (remove one of these @depends)"
    )
    assert "step 'score' cannot be sent to the 'processes' engine's workers" in messages[1]
    assert "engine='threads'" in messages[1]
    assert messages[2].startswith("step 'score' failed on chunk 3 (input [1, 2])\n")
    assert messages[2].endswith("KeyError: 1")
    assert "step 'score' chunk 7 died (worker pid-12 exited with code 3)" in messages[3]
    assert "retries=" in messages[3]
    assert messages[4] == "step 'score' chunk 2 ran longer than its timeout of 1.5s"
    assert messages[5] == "run cancelled: cancel requested"


def test_unknown_engine_lists_the_known_ones() -> None:
    with pytest.raises(UnknownEngineError, match=r"no engine named 'warp'; choose one of: .*serial"):
        madhatter.engines.get_engine("warp")


def test_available_engines_include_the_stdlib_ones() -> None:
    available = madhatter.testing.available_engines()
    assert {"serial", "threads", "processes"} <= set(available)
    assert set(available) <= set(madhatter.engines.engine_names())


def test_an_engine_option_the_engine_does_not_take_names_its_options() -> None:
    with pytest.raises(
        madhatter.EngineError,
        match=r"'threads' engine has no option 'colour' \(its options: none but workers\)",
    ):
        madhatter.engines.get_engine("threads", colour="red")


def test_an_engine_written_to_the_old_contract_is_told_what_changed() -> None:
    with pytest.raises(TypeError, match=r"sets handles_retries, .*EngineTraits\(retries=\.\.\.\)"):

        class Old(madhatter.engines.Engine):  # the 0.1 contract's class flags
            name = "old"
            handles_retries = True
            keeps_results = True


def test_a_prepare_that_returns_no_traits_is_a_clear_error() -> None:
    from madhatter.engines.threads import ThreadsEngine

    class Unprepared(ThreadsEngine):
        name = "unprepared"

        def prepare(self, resources: object) -> None:  # type: ignore[override]  # the old hook
            return None

    @madhatter.preprocess
    def items() -> list[int]:
        return [1, 2]

    @madhatter.depends(items)
    @madhatter.parallel.map
    def double(x: int) -> int:
        return 2 * x

    with (
        Unprepared() as engine,
        pytest.raises(madhatter.EngineError, match=r"'unprepared' engine's prepare\(\) returned None"),
    ):
        madhatter.run(double, engine=engine)


def test_an_engine_that_is_neither_a_name_nor_an_engine_is_a_type_error() -> None:
    @madhatter.preprocess
    def items() -> list[int]:
        return [1]

    with pytest.raises(
        TypeError, match="engine= takes an engine's name or an Engine instance, not object"
    ):
        madhatter.run(items, engine=object())
