"""Building a pipeline catches its mistakes before any work, naming the steps and the fix."""

from __future__ import annotations

import types
from typing import Any

import pytest

import madhatter
from madhatter import (
    CycleError,
    Pipeline,
    PipelineDefinitionError,
    depends,
    parallel,
    postprocess,
    preprocess,
)
from madhatter.graph import Plan


@preprocess
def load() -> list[int]:
    return [1, 2, 3, 4, 5, 6]


@depends(load)
@parallel.map
def clean(x: int) -> int:
    return x + 1


@depends(clean)
@parallel.filter
def keep_even(x: int) -> bool:
    return x % 2 == 0


@depends(keep_even)
@postprocess
def report(values: list[int]) -> list[int]:
    return values


def stage_steps(plan: Plan) -> list[tuple[str, ...]]:
    return [stage.step_names for stage in plan.stages]


# -- shape -------------------------------------------------------------------------------------


def test_upstreams_are_pulled_in_and_ordered_topologically() -> None:
    pipeline = Pipeline([report])
    assert list(pipeline.graph.steps) == ["load", "clean", "keep_even", "report"]
    assert pipeline.graph.output == "report"
    assert pipeline.graph["keep_even"].upstreams == ("clean",)
    assert pipeline.graph.downstream("clean") == ("keep_even",)
    assert repr(pipeline) == "<Pipeline 'report': load -> clean -> keep_even -> report>"
    assert pipeline.run(engine="serial") == [2, 4, 6]


def test_listing_order_does_not_matter() -> None:
    assert list(Pipeline([keep_even, report, load, clean]).graph.steps) == list(
        Pipeline([report]).graph.steps
    )


def test_chain_links_steps_in_the_given_order() -> None:
    @parallel.map
    def double(x: int) -> int:
        return 2 * x

    @postprocess
    def total(values: list[int]) -> int:
        return sum(values)

    pipeline = Pipeline.chain(load, double, total)
    assert pipeline.graph["double"].upstreams == ("load",)
    assert pipeline.run(engine="serial") == 42


def test_from_module_takes_the_decorated_functions_defined_there() -> None:
    module = types.ModuleType("sample")
    exec(
        "import madhatter\n"
        "@madhatter.preprocess\n"
        "def numbers():\n"
        "    return [1, 2]\n"
        "@madhatter.depends(numbers)\n"
        "@madhatter.parallel.map\n"
        "def inc(x):\n"
        "    return x + 1\n"
        "from madhatter import postprocess as imported_not_a_step\n",
        module.__dict__,
    )
    pipeline = Pipeline.from_module(module)
    assert list(pipeline.graph.steps) == ["numbers", "inc"]
    assert pipeline.name == "sample"
    assert pipeline.run(engine="serial") == [2, 3]


def test_a_module_without_steps_is_an_error() -> None:
    with pytest.raises(PipelineDefinitionError, match="module 'empty' defines no madhatter steps"):
        Pipeline.from_module(types.ModuleType("empty"))


def test_an_empty_pipeline_is_an_error() -> None:
    with pytest.raises(PipelineDefinitionError, match="at least one step"):
        Pipeline([])


# -- cycles ------------------------------------------------------------------------------------


def test_a_cycle_is_named_in_data_flow_order() -> None:
    # load -> clean -> score is the intended flow; ``load`` depending on ``score`` closes a loop.
    @depends("score")
    @parallel.map(name="load")
    def load_(x: int) -> int:
        return x

    @depends(load_)
    @parallel.map(name="clean")
    def clean_(x: int) -> int:
        return x

    @depends(clean_)
    @parallel.map(name="score")
    def score_(x: int) -> int:
        return x

    with pytest.raises(CycleError) as caught:
        Pipeline([load_, clean_, score_])
    assert str(caught.value) == (
        "steps form a cycle: load -> clean -> score -> load (remove one of these @depends)"
    )
    assert caught.value.cycle == ["load", "clean", "score"]


def test_a_cycle_names_only_its_members() -> None:
    @depends(load)
    @parallel.map
    def entry(x: int) -> int:
        return x

    @depends("b")
    @parallel.map
    def a(x: int) -> int:
        return x

    @depends(a)
    @parallel.map
    def b(x: int) -> int:
        return x

    @depends(entry, b)
    @postprocess
    def end(left: list[int], right: list[int]) -> list[int]:
        return left + right

    with pytest.raises(CycleError) as caught:
        Pipeline([end, a, b])
    assert sorted(caught.value.cycle) == ["a", "b"]


def test_a_step_depending_on_itself() -> None:
    @depends("selfish")
    @parallel.map
    def selfish(x: int) -> int:
        return x

    with pytest.raises(CycleError, match=r"cycle: selfish -> selfish \("):
        Pipeline([selfish])


# -- upstreams ---------------------------------------------------------------------------------


def test_unknown_upstream_name() -> None:
    @depends("lod")
    @parallel.map
    def typo(x: int) -> int:
        return x

    with pytest.raises(
        PipelineDefinitionError,
        match=r"step 'typo' depends on 'lod', but there is no step of that name "
        r"\(known steps: load, typo\)",
    ):
        Pipeline([load, typo])


def test_upstream_that_is_not_a_step() -> None:
    def helper() -> list[int]:
        return [1]

    @depends(helper)
    @parallel.map
    def uses_helper(x: int) -> int:
        return x

    with pytest.raises(
        PipelineDefinitionError,
        match=r"step 'uses_helper' depends on 'helper', which is not a madhatter step: decorate it",
    ):
        Pipeline([uses_helper])


def test_listing_a_plain_function_is_an_error() -> None:
    def plain() -> None:
        pass

    with pytest.raises(PipelineDefinitionError, match=r"plain'? is not a madhatter step: decorate it"):
        Pipeline([load, plain])


def test_string_upstream_names_resolve_to_steps_defined_later() -> None:
    @depends("later_source")
    @parallel.map
    def consumer(x: int) -> int:
        return x * 10

    @preprocess
    def later_source() -> list[int]:
        return [1, 2]

    pipeline = Pipeline([consumer, later_source])
    assert list(pipeline.graph.steps) == ["later_source", "consumer"]
    assert pipeline.run(engine="serial") == [10, 20]


def test_string_upstream_names_use_step_names_not_function_names() -> None:
    @preprocess(name="source")
    def make_items() -> list[int]:
        return [3]

    @depends("source")
    @postprocess
    def show(values: list[int]) -> list[int]:
        return values

    assert madhatter.run(Pipeline([show, make_items]), engine="serial") == [3]


def test_two_functions_with_one_name() -> None:
    @preprocess(name="load")
    def other_load() -> list[int]:
        return []

    with pytest.raises(PipelineDefinitionError, match="two different functions are both named 'load'"):
        Pipeline([load, other_load, clean])


# -- arity, terminal step, signatures ------------------------------------------------------------


def test_parallel_step_with_two_upstreams() -> None:
    @depends(load, clean)
    @parallel.map
    def zipper(x: int) -> int:
        return x

    with pytest.raises(
        PipelineDefinitionError,
        match=r"parallel step 'zipper' needs exactly one upstream \(it has 2\).*@postprocess",
    ):
        Pipeline([zipper])


def test_parallel_step_without_upstream() -> None:
    @parallel.map
    def orphan(x: int) -> int:
        return x

    with pytest.raises(
        PipelineDefinitionError, match=r"'orphan' needs exactly one upstream \(it has 0\)"
    ):
        Pipeline([orphan])


def test_source_cannot_depend() -> None:
    @depends(load)
    @preprocess
    def second_source() -> list[int]:
        return []

    with pytest.raises(PipelineDefinitionError, match="'second_source' is a @preprocess source"):
        Pipeline([second_source])


def test_postprocess_without_upstream() -> None:
    @postprocess
    def lonely(values: list[int]) -> list[int]:
        return values

    with pytest.raises(
        PipelineDefinitionError, match=r"'lonely' is a @postprocess step with no upstream"
    ):
        Pipeline([lonely])


def test_bare_depends_makes_a_whole_step() -> None:
    @depends(load)
    def summed(values: list[int]) -> int:
        return sum(values)

    pipeline = Pipeline([summed])
    assert pipeline.graph["summed"].kind == "whole"
    assert pipeline.run(engine="serial") == 21


def test_stream_only_on_whole_steps() -> None:
    # stream= is a @postprocess option; a spec carrying it onto a parallel step is refused.
    import dataclasses

    from madhatter._steps import SPEC_ATTRIBUTE, get_spec

    @depends(load)
    @parallel.map
    def streaming_map(x: int) -> int:
        return x

    spec = get_spec(streaming_map)
    assert spec is not None
    setattr(streaming_map, SPEC_ATTRIBUTE, dataclasses.replace(spec, stream=True))
    with pytest.raises(PipelineDefinitionError, match="stream=True applies to @postprocess steps only"):
        Pipeline([streaming_map])


def test_no_terminal_step() -> None:
    @depends(load)
    @parallel.map
    def branch_a(x: int) -> int:
        return x

    @depends(load)
    @parallel.map
    def branch_b(x: int) -> int:
        return x

    with pytest.raises(
        PipelineDefinitionError,
        match=r"the pipeline has 2 final steps \(branch_a, branch_b\); it needs exactly one",
    ):
        Pipeline([branch_a, branch_b])


def test_output_chooses_among_several_terminals() -> None:
    @depends(load)
    @parallel.map
    def branch_a(x: int) -> int:
        return x * 100

    @depends(load)
    @parallel.map
    def branch_b(x: int) -> int:
        return -x

    pipeline = Pipeline([branch_a, branch_b], output="branch_b")
    assert list(pipeline.graph.steps) == ["load", "branch_b"]  # only what the output needs
    assert pipeline.run(engine="serial") == [-1, -2, -3, -4, -5, -6]
    assert Pipeline([branch_a, branch_b], output=branch_a).graph.output == "branch_a"
    with pytest.raises(PipelineDefinitionError, match=r"output='nope' is not a step \(known steps:"):
        Pipeline([branch_a, branch_b], output="nope")


@pytest.mark.parametrize(
    ("decorate", "signature", "message"),
    [
        (lambda f: depends(load)(parallel.map(f)), "def f(): return 1", "receives one item"),
        (lambda f: depends(load)(parallel(f)), "def f(): return []", "receives one chunk"),
        (
            lambda f: depends(load, clean)(postprocess(f)),
            "def f(a): return a",
            r"receives 2 argument\(s\), one per upstream but its signature \(a\) takes only 1",
        ),
        (
            lambda f: depends(load)(parallel.map(f)),
            "def f(*, x): return x",
            r"receives one item but its signature \(\*, x\) takes only 0",
        ),
    ],
)
def test_signature_must_take_the_inputs(decorate: Any, signature: str, message: str) -> None:
    namespace: dict[str, Any] = {}
    exec(signature, namespace)
    step = decorate(namespace["f"])
    with pytest.raises(PipelineDefinitionError, match=rf"step 'f' {message}"):
        Pipeline([step])


def test_varargs_signatures_take_any_inputs() -> None:
    @depends(load, clean)
    @postprocess
    def merge(*parts: list[int]) -> int:
        return sum(map(sum, parts))

    assert madhatter.run(merge, engine="serial") == 21 + 27


def test_keyword_only_parameter_without_default() -> None:
    @depends(load)
    @parallel.map
    def f(x: int, *, scale: int) -> int:
        return x * scale

    with pytest.raises(PipelineDefinitionError, match="parameter 'scale' of step 'f' has no default"):
        Pipeline([f])


# -- fusion rules in the plan ------------------------------------------------------------------


def test_a_chain_of_parallel_steps_fuses_into_one_stage() -> None:
    plan = Pipeline([report]).plan()
    assert stage_steps(plan) == [("load",), ("clean", "keep_even"), ("report",)]
    assert [stage.kind for stage in plan.stages] == ["driver", "parallel", "driver"]
    assert plan.stages[1].name == "clean+keep_even"
    assert plan.stage("report").upstreams == ("clean+keep_even",)
    assert plan.output == "report"


def test_fuse_false_keeps_every_step_apart() -> None:
    plan = Pipeline([report]).plan(fuse=False)
    assert stage_steps(plan) == [("load",), ("clean",), ("keep_even",), ("report",)]
    assert plan.stage("keep_even").upstreams == ("clean",)


def test_the_chain_concurrency_is_the_smallest_n() -> None:
    @depends(load)
    @parallel.map(n=4)
    def wide(x: int) -> int:
        return x

    @depends(wide)
    @parallel.map(n=2)
    def narrow(x: int) -> int:
        return x

    @depends(narrow)
    @parallel.filter
    def unlimited(x: int) -> bool:
        return True

    plan = Pipeline([unlimited]).plan()
    assert stage_steps(plan) == [("load",), ("wide", "narrow", "unlimited")]
    assert plan.stages[1].n == 2


def _pair(first: dict[str, Any], second: dict[str, Any]) -> Plan:
    @depends(load)
    @parallel.map(**first)
    def first_step(x: int) -> int:
        return x

    @depends(first_step)
    @parallel.map(**second)
    def second_step(x: int) -> int:
        return x

    return Pipeline([second_step]).plan()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({}, {"retries": 1}),
        ({"retries": 2}, {"retries": 1}),
        ({}, {"retry_delay": 1.0}),
        ({}, {"timeout": 5.0}),
        ({"timeout": 1.0}, {"timeout": 5.0}),
        ({}, {"ordered": False}),
        ({}, {"engine": "threads"}),
        ({}, {"resources": {"cpus": 1}}),
        ({}, {"chunk_by": 5}),
        ({"chunk_by": 10}, {"chunk_by": 5}),
    ],
)
def test_steps_scheduled_differently_do_not_fuse(first: dict[str, Any], second: dict[str, Any]) -> None:
    assert stage_steps(_pair(first, second)) == [("load",), ("first_step",), ("second_step",)]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({}, {}),
        ({"n": 3}, {"n": 1}),
        ({"chunk_by": 5}, {}),
        ({"chunk_by": 5}, {"chunk_by": 5}),
        ({"retries": 2, "timeout": 3.0}, {"retries": 2, "timeout": 3.0}),
        ({"on_error": "skip"}, {}),
        ({"setup": dict}, {}),
    ],
)
def test_steps_scheduled_alike_fuse(first: dict[str, Any], second: dict[str, Any]) -> None:
    plan = _pair(first, second)
    assert stage_steps(plan) == [("load",), ("first_step", "second_step")]
    assert plan.stages[1].chunk_by == first.get("chunk_by")


def test_a_step_read_by_two_consumers_ends_its_chain() -> None:
    @depends(load)
    @parallel.map
    def shared(x: int) -> int:
        return x

    @depends(shared)
    @parallel.map
    def left(x: int) -> int:
        return x

    @depends(shared)
    @parallel.map
    def right(x: int) -> int:
        return x

    @depends(left, right)
    @postprocess
    def both(a: list[int], b: list[int]) -> list[int]:
        return a + b

    plan = Pipeline([both]).plan()
    assert stage_steps(plan) == [("load",), ("shared",), ("left",), ("right",), ("both",)]
    assert [s.name for s in plan.consumers("shared")] == ["left", "right"]


def test_driver_steps_never_fuse() -> None:
    @depends(report)
    @parallel.map
    def after_whole(x: int) -> int:
        return x

    plan = Pipeline([after_whole]).plan()
    assert stage_steps(plan) == [("load",), ("clean", "keep_even"), ("report",), ("after_whole",)]
