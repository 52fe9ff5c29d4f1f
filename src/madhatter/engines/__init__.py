"""Where tasks run: the engine contract, its kit, and one module per engine, chosen by name.

=============  ==========================================================================
``serial``     every task inline in the driver, in order: for debugging, and the reference
``threads``    a thread pool in the driver: I/O-bound steps
``processes``  local worker processes (the default): CPU-bound steps
``dask``       a Dask cluster, given or started for the run (``madhatter[dask]``)
``ray``        a Ray cluster, given or started for the run (``madhatter[ray]``)
``docker``     each task in a Docker container, warm or fresh per task (``madhatter[docker]``)
=============  ==========================================================================

Engines see :class:`Task` objects, never a pipeline: nothing here imports the graph or the run
package. Third-party engines join by the ``madhatter.engines`` entry-point group (``_registry``).
"""

from ._base import Engine, EngineTraits, Remote, Task, TaskLost, TaskResult, TaskTimedOut
from ._registry import (
    check_options,
    engine_class,
    engine_names,
    get_engine,
    register_engine,
    require_extra,
)

__all__ = [
    "Engine",
    "EngineTraits",
    "Remote",
    "Task",
    "TaskLost",
    "TaskResult",
    "TaskTimedOut",
    "check_options",
    "engine_class",
    "engine_names",
    "get_engine",
    "register_engine",
    "require_extra",
]
