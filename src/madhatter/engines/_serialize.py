"""How tasks and results cross a process boundary.

Data goes through the standard pickle first (fast for plain data; cloudpickle's per-object hook
makes it several times slower on large lists), falling back to cloudpickle for lambdas and other
objects pickle refuses. Functions always go through cloudpickle, so steps defined in ``__main__``,
closures and lambdas work on every engine that ships code.
"""

from __future__ import annotations

import pickle
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
