"""The decorators: they return the function itself, record a spec, stack, and reject bad options."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

import madhatter
from madhatter import depends, parallel, postprocess, preprocess
from madhatter._steps import CONTAINER_ENGINE, StepSpec, get_spec


@preprocess
def numbers() -> list[int]:
    return [1, 2, 3]


@depends(numbers)
@parallel(n=3, chunk_by=2)
def doubled(chunk: list[int]) -> list[int]:
    return [x * 2 for x in chunk]


@parallel.map(retries=2, retry_delay=0.5, timeout=3.0, on_error="skip", ordered=False)
@depends(numbers)
def squared(x: int) -> int:
    return x * x


@depends(doubled, squared)
@postprocess
def combined(a: list[int], b: list[int]) -> list[int]:
    return a + b


def test_decorators_return_the_function_itself_still_callable() -> None:
    assert numbers() == [1, 2, 3]
    assert doubled([1, 5]) == [2, 10]
    assert squared(4) == 16
    assert combined([1], [2]) == [1, 2]
    assert numbers.__name__ == "numbers"
    assert doubled.__qualname__ == "doubled"


def test_decorated_functions_pickle_by_reference() -> None:
    for fn in (numbers, doubled, squared, combined):
        assert pickle.loads(pickle.dumps(fn)) is fn


def test_spec_records_kind_and_options() -> None:
    spec = get_spec(doubled)
    assert spec == StepSpec(kind="chunks", upstreams=(numbers,), n=3, chunk_by=2)
    assert get_spec(numbers) == StepSpec(kind="source")
    assert get_spec(combined) == StepSpec(kind="whole", upstreams=(doubled, squared))


def test_friendly_attributes_mirror_the_spec() -> None:
    assert doubled.n == 3
    assert doubled.chunk_by == 2
    assert doubled.dependency is numbers
    assert doubled.dependencies == (numbers,)
    assert combined.dependency == (doubled, squared)
    assert combined.dependencies == (doubled, squared)


def test_depends_stacks_in_either_order() -> None:
    # squared has @depends *below* @parallel.map, doubled has it above: both record everything.
    spec = get_spec(squared)
    assert spec is not None
    assert spec.kind == "map"
    assert spec.upstreams == (numbers,)
    assert (spec.retries, spec.retry_delay, spec.timeout) == (2, 0.5, 3.0)
    assert (spec.on_error, spec.ordered) == ("skip", False)
    assert squared.dependency is numbers


def test_parallel_kinds() -> None:
    @parallel.filter
    def keep(x: int) -> bool:
        return x > 1

    @parallel
    def chunks(items: list[int]) -> list[int]:
        return items

    @parallel.map
    def each(x: int) -> int:
        return x

    kinds = {fn.__name__: get_spec(fn).kind for fn in (keep, chunks, each)}  # type: ignore[union-attr]
    assert kinds == {"keep": "filter", "chunks": "chunks", "each": "map"}
    assert keep(0) is False


def test_postprocess_stream_and_names() -> None:
    @postprocess(stream=True, name="total")
    def add_up(items: Any) -> int:
        return sum(items)

    @preprocess(name="start")
    def begin() -> list[int]:
        return []

    assert get_spec(add_up) == StepSpec(kind="whole", stream=True, name="total")
    assert get_spec(begin) == StepSpec(kind="source", name="start")


def test_resources_and_setup_are_recorded() -> None:
    def setup() -> dict[str, int]:
        return {"k": 1}

    @parallel.map(resources={"memory": "1g", "cpus": 2}, setup=setup, engine="threads")
    def f(x: int, k: int) -> int:
        return x + k

    spec = get_spec(f)
    assert spec is not None
    assert spec.resources == (("cpus", 2), ("memory", "1g"))
    assert spec.setup is setup
    assert spec.engine == "threads"


def test_container_options_pick_the_container_engine_unless_the_step_names_one() -> None:
    @parallel.map(image="repo/ocr:1", cpus=1)
    def default(x: int) -> int:
        return x

    @parallel.map(image="repo/ocr:1", isolate="task", engine="podman")
    def named(x: int) -> int:
        return x

    @parallel.map(cpus=2)
    def local(x: int) -> int:
        return x

    assert get_spec(default) == StepSpec(
        kind="map", engine=CONTAINER_ENGINE, resources=(("cpus", 1), ("image", "repo/ocr:1"))
    )
    assert CONTAINER_ENGINE == "docker"
    named_spec = get_spec(named)
    assert named_spec is not None
    assert named_spec.engine == "podman"  # a third-party container engine serves image= too
    assert named_spec.resources == (("image", "repo/ocr:1"), ("isolate", "task"))
    local_spec = get_spec(local)
    assert local_spec is not None
    assert (local_spec.engine, local_spec.resources) == (None, (("cpus", 2),))


def test_parallel_options_default_as_the_spec_and_unknown_ones_are_refused() -> None:
    @parallel(n=2)
    def f(chunk: list[int]) -> list[int]:
        return chunk

    assert get_spec(f) == StepSpec(kind="chunks", n=2)
    with pytest.raises(TypeError, match="@parallel got an unexpected keyword argument 'chunks_by'"):
        parallel(chunks_by=3)  # type: ignore[call-overload]


def test_plain_functions_have_no_spec() -> None:
    def plain() -> None:
        pass

    assert get_spec(plain) is None
    assert get_spec(42) is None


def test_a_function_has_only_one_kind() -> None:
    @preprocess
    def source() -> list[int]:
        return []

    with pytest.raises(TypeError, match=r"'source' is already a 'source' step"):
        parallel.map(source)
    with pytest.raises(TypeError, match="only one of @preprocess, @parallel and @postprocess"):
        postprocess(source)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n": 0}, "n must be a positive integer"),
        ({"n": 1.5}, "n must be a positive integer"),
        ({"chunk_by": 0}, "chunk_by must be a positive integer"),
        ({"chunk_by": "10"}, "chunk_by must be a positive integer"),
        ({"retries": -1}, "retries must be a non-negative integer"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"timeout": -2.5}, "timeout must be a positive number"),
        ({"on_error": "ignore"}, "on_error must be 'raise' or 'skip'"),
    ],
)
def test_bad_parallel_options_are_rejected(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parallel.map(**options)


def test_setup_must_be_callable() -> None:
    with pytest.raises(TypeError, match="setup must be a callable"):
        parallel(setup={"model": 1})  # type: ignore[arg-type]


def test_depends_needs_steps_or_names() -> None:
    with pytest.raises(TypeError, match="at least one upstream"):
        depends()
    with pytest.raises(TypeError, match="step functions or step names, not 42"):
        depends(42)  # type: ignore[arg-type]
    assert depends("later")(lambda x: x).dependency == "later"


def test_decorators_apply_to_callables_only() -> None:
    with pytest.raises(TypeError, match="apply to functions, not int"):
        preprocess(5)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="apply to functions, not str"):
        parallel.map("text")  # type: ignore[call-overload]


def test_the_public_decorators_are_the_ones_in_steps() -> None:
    assert madhatter.parallel is parallel
    assert madhatter.parallel.map is parallel.map
    assert madhatter.depends is depends
