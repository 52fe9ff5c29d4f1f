"""The decorators that turn plain functions into pipeline steps.

Each decorator returns the *function itself*: it stays directly callable with its original
behaviour, pickles by reference like any module-level function, and only gains attributes. The step's
options live in one frozen :class:`StepSpec` under ``fn.__madhatter__``; the friendly attributes
(``fn.n``, ``fn.chunk_by``, ``fn.dependency``, ``fn.dependencies``) mirror it. Decorators merge into
the spec already there, so they stack in either order.

Step kinds:

* ``@preprocess`` -- a *source*: called once in the driver; returns the sequence (a list, or any
  iterable, including an endless generator).
* ``@parallel`` -- *chunks*: the upstream sequence is split into chunks, the function maps a chunk
  (a list) to an iterable of outputs, and the outputs are re-assembled in input order.
* ``@parallel.map`` -- *map*: one item in, one item out.
* ``@parallel.filter`` -- *filter*: keeps the items for which the function returns a true value.
* ``@postprocess`` -- *whole*: called once in the driver with the whole upstream result (a list, or a
  lazy iterator with ``stream=True``). A function with ``@depends`` and no other decorator is also a
  *whole* step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar, overload

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; only the type checker reads it
    from typing_extensions import Unpack

F = TypeVar("F", bound=Callable[..., Any])

StepKind = Literal["source", "chunks", "map", "filter", "whole"]
PARALLEL_KINDS: frozenset[str] = frozenset({"chunks", "map", "filter"})
OnError = Literal["raise", "skip"]
Isolate = Literal["container", "task"]

SPEC_ATTRIBUTE = "__madhatter__"

DECORATIONS = (SPEC_ATTRIBUTE, "n", "chunk_by", "dependency", "dependencies")
"""Every attribute the decorators set on a function. They are listed in the function's
``__madhatter_local__``, so that a step pickled by value leaves them behind (they reference its
upstream functions, and through them whatever data those reach; see
``engines/_serialize.FunctionPickler``)."""

CONTAINER_ENGINE = "docker"
"""The engine of a step with container options (``image=``, ``isolate=``, ``network=``) that
names none with ``engine=``. Naming one lets any engine that runs containers serve such steps."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepSpec:
    """Everything the decorators recorded about one step.

    Attributes:
        kind: what the step does with its input (see the module docstring); ``None`` until a kind
            decorator is applied (a bare ``@depends`` step becomes ``"whole"`` when the graph is built).
        upstreams: the steps this one depends on (functions, or step names as strings).
        n: at most this many of the step's chunks run at once (``None``: as many as the engine has
            workers).
        chunk_by: items per chunk; ``None`` sizes chunks from measured task times.
        retries: how many times a failed chunk is tried again before the run fails.
        retry_delay: seconds before the first retry; doubled for each further one.
        timeout: seconds one chunk may run before it fails with ``TaskTimeout``.
        on_error: ``"raise"`` fails the run; ``"skip"`` leaves out the failing items and reports them.
        setup: called once per worker; returns a mapping of keyword arguments for the function.
        ordered: keep outputs in input order (the default) or emit them as chunks finish.
        stream: for whole steps, receive lazy iterators instead of lists.
        name: the step's name; defaults to the function's ``__name__``.
        engine: run this step on another engine than the run's (e.g. a container engine).
        resources: engine-specific resource requests (e.g. ``{"cpus": 1, "memory": "512m"}``).
        cache: whether the chunk cache may keep and reuse the step's outputs (``False`` for steps
            that must always run: they call the network, read the clock, draw unseeded numbers).
        cache_key: what else the step's outputs depend on that the cache cannot see (a version
            string, a file's modification time), or a function of no arguments returning it,
            called once per run.
    """

    kind: StepKind | None = None
    upstreams: tuple[Callable[..., Any] | str, ...] = ()
    n: int | None = None
    chunk_by: int | None = None
    retries: int = 0
    retry_delay: float = 0.0
    timeout: float | None = None
    on_error: OnError = "raise"
    setup: Callable[[], Mapping[str, Any]] | None = None
    ordered: bool = True
    stream: bool = False
    name: str | None = None
    engine: str | None = None
    resources: tuple[tuple[str, Any], ...] = ()
    cache: bool = True
    cache_key: Any = None


def get_spec(fn: object) -> StepSpec | None:
    """The spec recorded on ``fn`` by madhatter's decorators, or ``None`` for a plain function."""
    spec = getattr(fn, SPEC_ATTRIBUTE, None)
    return spec if isinstance(spec, StepSpec) else None


def _record(fn: F, **changes: Any) -> F:
    if not callable(fn):
        raise TypeError(f"madhatter decorators apply to functions, not {type(fn).__name__}")
    spec = dataclasses.replace(get_spec(fn) or StepSpec(), **changes)
    try:
        setattr(fn, SPEC_ATTRIBUTE, spec)
        fn.__madhatter_local__ = DECORATIONS  # type: ignore[attr-defined]
    except AttributeError:
        raise TypeError(
            f"madhatter decorators apply to plain functions; {fn!r} does not take attributes "
            f"(decorate the function itself, not a bound method or a builtin)"
        ) from None
    if spec.kind in PARALLEL_KINDS:
        fn.n = spec.n  # type: ignore[attr-defined]
        fn.chunk_by = spec.chunk_by  # type: ignore[attr-defined]
    if spec.upstreams:
        fn.dependencies = spec.upstreams  # type: ignore[attr-defined]
        fn.dependency = spec.upstreams[0] if len(spec.upstreams) == 1 else spec.upstreams  # type: ignore[attr-defined]
    return fn


def _check_kind(fn: Callable[..., Any], kind: StepKind) -> None:
    spec = get_spec(fn)
    if spec is not None and spec.kind is not None and spec.kind != kind:
        raise TypeError(
            f"{getattr(fn, '__name__', fn)!r} is already a {spec.kind!r} step; "
            f"a function can have only one of @preprocess, @parallel and @postprocess"
        )


@overload
def preprocess(fn: F, /) -> F: ...
@overload
def preprocess(*, name: str | None = None) -> Callable[[F], F]: ...
def preprocess(fn: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Mark ``fn`` as a source: it produces the sequence the next steps work on.

    Its keyword parameters with defaults are run parameters (``run(params={...})``).
    """

    def decorate(f: F) -> F:
        _check_kind(f, "source")
        return _record(f, kind="source", name=name)

    return decorate(fn) if fn is not None else decorate


def _check_options(
    n: int | None, chunk_by: int | None, retries: int, timeout: float | None, on_error: str
) -> None:
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive integer or None, not {n!r}")
    if chunk_by is not None and (not isinstance(chunk_by, int) or chunk_by < 1):
        raise ValueError(f"chunk_by must be a positive integer or None, not {chunk_by!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a non-negative integer, not {retries!r}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")


def _resources(
    resources: Mapping[str, Any] | None,
    image: str | None,
    cpus: float | None,
    memory: str | int | None,
    isolate: str | None,
    network: str | None,
) -> tuple[tuple[str, Any], ...]:
    """The step's resource requests: ``resources`` plus the decorator's named ones."""
    if isolate is not None and isolate not in ("container", "task"):
        raise ValueError(f"isolate must be 'container' or 'task', not {isolate!r}")
    if cpus is not None and not (isinstance(cpus, (int, float)) and cpus > 0):
        raise ValueError(f"cpus must be a positive number, not {cpus!r}")
    named = {"image": image, "cpus": cpus, "memory": memory, "isolate": isolate, "network": network}
    merged = {**(resources or {}), **{k: v for k, v in named.items() if v is not None}}
    return tuple(sorted(merged.items()))


class ParallelOptions(TypedDict, total=False):
    """The keyword options of ``@parallel``, ``@parallel.map`` and ``@parallel.filter``, written
    once for the type checker and the decorator alike: what each means is in
    :meth:`_ParallelDecorator.__call__`, each default is :class:`StepSpec`'s (none for the
    container options ``image`` to ``network``, which become ``resources``)."""

    n: int | None
    chunk_by: int | None
    retries: int
    retry_delay: float
    timeout: float | None
    on_error: OnError
    setup: Callable[[], Mapping[str, Any]] | None
    ordered: bool
    name: str | None
    engine: str | None
    resources: Mapping[str, Any] | None
    image: str | None
    cpus: float | None
    memory: str | int | None
    isolate: Isolate | None
    network: str | None
    cache: bool
    cache_key: Any


class _ParallelDecorator:
    """``@parallel`` (chunks), ``@parallel.map`` (per item) and ``@parallel.filter`` (keep items)."""

    def __init__(self, kind: StepKind) -> None:
        self._kind = kind

    @overload
    def __call__(self, fn: F, /) -> F: ...
    @overload
    def __call__(self, fn: None = None, /, **options: Unpack[ParallelOptions]) -> Callable[[F], F]: ...
    def __call__(
        self, fn: F | None = None, /, **options: Unpack[ParallelOptions]
    ) -> F | Callable[[F], F]:
        """Mark a function as a parallel step. Works bare (``@parallel``) or with options.

        Args:
            n: at most this many chunks of the step run at once (default: all workers).
            chunk_by: items per chunk (default: sized from measured task times).
            retries: times a failed chunk is tried again before the run fails.
            retry_delay: seconds before the first retry, doubled for each further one.
            timeout: seconds one chunk may run.
            on_error: ``"raise"`` (fail the run) or ``"skip"`` (leave out and report failing items).
            setup: called once per worker; returns keyword arguments for the function, e.g.
                ``lambda: {"model": load_model()}``.
            ordered: keep input order (default) or emit results as chunks finish.
            name: the step's name (default: the function's name).
            engine: run this step on a different engine than the rest of the run. With the
                container options below, the engine that runs the containers: any engine that
                does (one installed by entry point, too) may be named; without ``engine=`` it is
                :data:`CONTAINER_ENGINE`, ``"docker"``.
            resources: engine-specific requests such as ``{"cpus": 1, "memory": "512m"}``.
            image: run each task in a container from this image (by default on the ``docker``
                engine, ``madhatter[docker]``); see docs/containers.md.
            cpus: CPUs per task (a container's limit; a Ray task's ``num_cpus``).
            memory: memory per task, bytes or ``"512m"`` (a container's hard limit).
            isolate: for containers: ``"container"`` (default: warm containers run many tasks)
                or ``"task"`` (a fresh container per task).
            network: for containers: a Docker network to join (default: none at all).
            cache: ``False`` for a step whose outputs the chunk cache must never reuse (it calls
                the network, reads the clock, draws unseeded random numbers); see
                docs/caching.md.
            cache_key: what else the outputs depend on that the cache cannot see (files read
                by path, a model's version): a value, or a function of no arguments called once
                per run.
        """
        unknown = sorted(set(options) - ParallelOptions.__optional_keys__)
        if unknown:
            raise TypeError(f"@parallel got an unexpected keyword argument {unknown[0]!r}")
        defaults = StepSpec()
        n, chunk_by = options.get("n"), options.get("chunk_by")
        retries, timeout = options.get("retries", defaults.retries), options.get("timeout")
        on_error = options.get("on_error", defaults.on_error)
        _check_options(n, chunk_by, retries, timeout, on_error)
        setup = options.get("setup")
        if setup is not None and not callable(setup):
            raise TypeError(f"setup must be a callable returning a mapping, not {setup!r}")
        image, isolate, network = options.get("image"), options.get("isolate"), options.get("network")
        cpus, memory = options.get("cpus"), options.get("memory")
        in_container = bool(image or isolate or network)
        changes = {
            "kind": self._kind,
            "n": n,
            "chunk_by": chunk_by,
            "retries": retries,
            "retry_delay": float(options.get("retry_delay", defaults.retry_delay)),
            "timeout": timeout,
            "on_error": on_error,
            "setup": setup,
            "ordered": options.get("ordered", defaults.ordered),
            "name": options.get("name"),
            "engine": options.get("engine") or (CONTAINER_ENGINE if in_container else None),
            "resources": _resources(options.get("resources"), image, cpus, memory, isolate, network),
            "cache": bool(options.get("cache", defaults.cache)),
            "cache_key": options.get("cache_key"),
        }

        def decorate(f: F) -> F:
            _check_kind(f, self._kind)
            return _record(f, **changes)

        return decorate(fn) if fn is not None else decorate


class _Parallel(_ParallelDecorator):
    map = _ParallelDecorator("map")
    filter = _ParallelDecorator("filter")


parallel = _Parallel("chunks")
"""Mark a function as a parallel step over chunks; ``parallel.map`` and ``parallel.filter`` work
per item. See :meth:`_ParallelDecorator.__call__` for the options."""


@overload
def postprocess(fn: F, /) -> F: ...
@overload
def postprocess(*, stream: bool = False, name: str | None = None) -> Callable[[F], F]: ...
def postprocess(
    fn: F | None = None, /, *, stream: bool = False, name: str | None = None
) -> F | Callable[[F], F]:
    """Mark ``fn`` as a final step that receives the whole re-assembled result of its upstreams.

    With ``stream=True`` it receives lazy iterators instead of lists, so an endless or huge
    stream can be reduced (summed, written out) in bounded memory.
    """

    def decorate(f: F) -> F:
        _check_kind(f, "whole")
        return _record(f, kind="whole", stream=stream, name=name)

    return decorate(fn) if fn is not None else decorate


def depends(*upstreams: Callable[..., Any] | str) -> Callable[[F], F]:
    """Record the steps this one takes its input from, in the order it receives them.

    Upstreams are step functions, or step names (strings) for steps defined later in the module.
    """
    if not upstreams:
        raise TypeError("@depends needs at least one upstream step")
    for upstream in upstreams:
        if not (callable(upstream) or isinstance(upstream, str)):
            raise TypeError(f"@depends takes step functions or step names, not {upstream!r}")

    def decorate(f: F) -> F:
        return _record(f, upstreams=tuple(upstreams))

    return decorate
