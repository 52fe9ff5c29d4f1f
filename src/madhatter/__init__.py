"""madhatter: turn the slow loops of everyday data work into parallel pipelines.

Decorate plain functions (``@preprocess``, ``@parallel``, ``@depends``, ``@postprocess``), then
``madhatter.run(module)`` or ``madhatter run file.py``. See README.md and docs/.
"""

from ._errors import (
    CacheCorruptionWarning,
    CacheWriteError,
    CycleError,
    EngineError,
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
from ._pipeline import Pipeline, SkippedItemsWarning, run
from ._results import RunReport, SkippedItem, StepStats
from ._steps import depends, parallel, postprocess, preprocess
from ._version import __version__

__all__ = [
    "CacheCorruptionWarning",
    "CacheWriteError",
    "CycleError",
    "EngineError",
    "MadhatterError",
    "MissingExtraError",
    "ParameterError",
    "Pipeline",
    "PipelineDefinitionError",
    "RunCancelled",
    "RunError",
    "RunReport",
    "ShippingError",
    "SkippedItem",
    "SkippedItemsWarning",
    "StepFailed",
    "StepStats",
    "TaskTimeout",
    "UnknownEngineError",
    "WorkerLost",
    "__version__",
    "depends",
    "parallel",
    "postprocess",
    "preprocess",
    "run",
]
for _name in set(__all__) - {"__version__"}:  # tracebacks and pickles say madhatter.CycleError
    globals()[_name].__module__ = __name__
