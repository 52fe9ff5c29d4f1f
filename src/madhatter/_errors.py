"""Every exception madhatter raises.

The tree::

    MadhatterError
    ├── PipelineDefinitionError      the pipeline as written cannot run (found before any work starts)
    │   ├── CycleError               @depends forms a loop
    │   ├── ShippingError            a step cannot be sent to a worker process
    │   └── ParameterError           a run parameter is unknown or cannot be converted
    ├── UnknownEngineError           no engine has that name
    ├── MissingExtraError            the engine needs an optional extra that is not installed
    ├── EngineError                  an engine cannot start or reach its cluster
    └── RunError                     something went wrong while the pipeline ran
        ├── StepFailed               a step's function raised on one chunk
        ├── WorkerLost               the worker process running a chunk died
        ├── TaskTimeout              a chunk ran longer than its step's ``timeout``
        ├── CacheWriteError          the chunk cache could not be written (a full disk, ...)
        └── RunCancelled             the run was cancelled by its ``cancel`` event
                                     (Ctrl-C raises KeyboardInterrupt, after stopping every worker)

Run errors keep their fields in ``args`` so they pickle unchanged across process boundaries, and
each message says which step and which chunk, so a user never has to guess where to look.
"""

from __future__ import annotations


class MadhatterError(Exception):
    """Base class of every error madhatter raises on purpose."""


class PipelineDefinitionError(MadhatterError):
    """The pipeline as written cannot run; the message names the step and the fix."""


class CycleError(PipelineDefinitionError):
    """Steps depend on each other in a loop."""

    def __init__(self, cycle: list[str]) -> None:
        super().__init__(cycle)
        self.cycle = list(cycle)

    def __str__(self) -> str:
        path = " -> ".join([*self.cycle, self.cycle[0]])
        return f"steps form a cycle: {path} (remove one of these @depends)"


class ShippingError(PipelineDefinitionError):
    """A step's function (or its setup) cannot be pickled for a worker process."""

    def __init__(self, step: str, reason: str, engine: str) -> None:
        super().__init__(step, reason, engine)
        self.step, self.reason, self.engine = step, reason, engine

    def __str__(self) -> str:
        return (
            f"step {self.step!r} cannot be sent to the {self.engine!r} engine's workers: "
            f"{self.reason}. Define the function (and anything it uses) at module level or make it "
            f"picklable, or run this pipeline with engine='threads' or engine='serial'."
        )


class ParameterError(PipelineDefinitionError):
    """A run parameter is unknown, or its value cannot be converted to the parameter's type."""


class UnknownEngineError(MadhatterError, ValueError):
    """No engine is registered under the requested name."""


class MissingExtraError(MadhatterError, ImportError):
    """An engine needs an optional extra (``pip install 'madhatter[dask]'``) that is missing."""


class EngineError(MadhatterError):
    """An engine cannot start, reach its cluster, or use the workers it found there."""


class RunError(MadhatterError):
    """Something went wrong while the pipeline ran."""


class StepFailed(RunError):
    """A step's function raised on one chunk.

    ``__cause__`` holds the user's own exception when it could be carried back from the worker;
    ``remote_traceback`` always holds the worker's traceback as text; ``preview`` shows the chunk.
    For a per-item step (``@parallel.map``, ``@parallel.filter``), ``item`` is the position of
    the item that raised in the chunk's input to that step and ``item_preview`` its short repr;
    otherwise both are ``None``.
    """

    def __init__(
        self,
        step: str,
        chunk: int,
        preview: str,
        remote_traceback: str,
        item: int | None = None,
        item_preview: str | None = None,
    ) -> None:
        super().__init__(step, chunk, preview, remote_traceback, item, item_preview)
        self.step, self.chunk, self.item, self.item_preview = step, chunk, item, item_preview
        self.preview, self.remote_traceback = preview, remote_traceback

    def __reduce__(self) -> tuple[object, ...]:
        # Keep the user's exception (``__cause__``) when the error crosses a process boundary.
        return (type(self), self.args, {**self.__dict__, "__cause__": self.__cause__})

    @property
    def cause_line(self) -> str:
        """The user's own exception in one line (the last line of the worker's traceback)."""
        lines = [line for line in self.remote_traceback.splitlines() if line.strip()]
        return lines[-1].strip() if lines else first_line(self)

    def __str__(self) -> str:
        where = f"chunk {self.chunk} (input {self.preview})"
        if self.item is not None:
            where += f", at item {self.item}: {self.item_preview}"
        return (
            f"step {self.step!r} failed on {where}\n"
            f"traceback from the worker:\n{self.remote_traceback.rstrip()}"
        )


class WorkerLost(RunError):
    """The worker process that ran a chunk died (a crash, ``os._exit``, or the OOM killer).

    When the chunk was bisected down to the item that kills its worker (see docs/guide.md,
    "Errors and faults"), ``item`` is that item's position in the chunk and ``item_preview`` its
    short repr; otherwise both are ``None``.
    """

    def __init__(
        self,
        step: str,
        chunk: int,
        detail: str,
        item: int | None = None,
        item_preview: str | None = None,
    ) -> None:
        super().__init__(step, chunk, detail, item, item_preview)
        self.step, self.chunk, self.detail = step, chunk, detail
        self.item, self.item_preview = item, item_preview

    def __str__(self) -> str:
        if self.item is not None:
            return (
                f"the worker running step {self.step!r} chunk {self.chunk} died ({self.detail}) "
                f"on item {self.item}: {self.item_preview}; every other item of the chunk ran "
                f"without it (set on_error='skip' on the step to leave such items out)"
            )
        return (
            f"the worker running step {self.step!r} chunk {self.chunk} died ({self.detail}); "
            f"set retries= on the step to retry such chunks"
        )


class TaskTimeout(RunError):
    """A chunk ran longer than its step's ``timeout``.

    As for :class:`WorkerLost`, ``item`` and ``item_preview`` name the item that alone runs past
    the timeout, once the chunk was bisected down to it; otherwise both are ``None``.
    """

    def __init__(
        self,
        step: str,
        chunk: int,
        timeout: float,
        item: int | None = None,
        item_preview: str | None = None,
    ) -> None:
        super().__init__(step, chunk, timeout, item, item_preview)
        self.step, self.chunk, self.timeout = step, chunk, timeout
        self.item, self.item_preview = item, item_preview

    def __str__(self) -> str:
        message = f"step {self.step!r} chunk {self.chunk} ran longer than its timeout of {self.timeout}s"
        if self.item is not None:
            message += f", on item {self.item} alone: {self.item_preview}"
        return message


class CacheWriteError(RunError):
    """A chunk cache entry could not be written (a full disk, a permission, a lost connection);
    no partial entry is left behind."""

    def __init__(self, location: str, step: str, reason: str) -> None:
        super().__init__(location, step, reason)
        self.location, self.step, self.reason = location, step, reason

    def __str__(self) -> str:
        return f"cannot write the cache of step {self.step!r} to {self.location}: {self.reason}"


class CacheCorruptionWarning(UserWarning):
    """A chunk cache entry was truncated, damaged or unreadable: it was skipped, deleted, and
    its items are recomputed."""


class RunCancelled(RunError):
    """The run was cancelled before it finished."""

    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"run cancelled: {self.reason}"


def first_line(error: BaseException) -> str:
    """The gist of an error in one line, for logs, events and summaries: the first line of its
    message, or its class name if it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
