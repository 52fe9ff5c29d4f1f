"""How tasks and results cross a process boundary.

Data goes through the standard pickle first (fast for plain data; cloudpickle's per-object hook
makes it several times slower on large lists), falling back to cloudpickle for lambdas and other
objects pickle refuses. Functions always go through cloudpickle, so steps defined in ``__main__``,
closures and lambdas work on every engine that ships code.
"""

from __future__ import annotations

import pickle
import sys
from typing import Any

import cloudpickle

PROTOCOL = pickle.HIGHEST_PROTOCOL


def dumps_data(value: Any) -> bytes:
    """Pickle data, falling back to cloudpickle for what plain pickle refuses."""
    try:
        return pickle.dumps(value, protocol=PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        result: bytes = cloudpickle.dumps(value, protocol=PROTOCOL)
        return result


def dumps_function(function: Any) -> bytes:
    """Pickle a function (by value where it cannot be imported by the receiver)."""
    result: bytes = cloudpickle.dumps(function, protocol=PROTOCOL)
    return result


loads = pickle.loads

_loaded_functions: dict[str, Any] = {}


def load_function(function_key: str, function_bytes: bytes) -> Any:
    """A task function, unpickled once per worker process and then reused (cluster engines send
    the same pickled chain with every task of a stage; unpickling it each time would cost)."""
    function = _loaded_functions.get(function_key)
    if function is None:
        function = _loaded_functions[function_key] = loads(function_bytes)
    return function


def worker_runtime() -> tuple[str, str]:
    """What must match between driver and workers: madhatter's version and Python's major.minor
    (run on a worker, it reports the worker's own)."""
    from .._version import __version__

    return __version__, f"{sys.version_info.major}.{sys.version_info.minor}"
