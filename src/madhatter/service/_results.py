"""A run's result as stored: JSON when it survives a round trip unchanged, else a pickle.

JSON results can be shown and served as they are. Anything else (sets, tuples, numpy arrays, user
classes) is pickled with cloudpickle by the worker and served only as a download: the server never
unpickles a result, since unpickling runs code, and only the client who asked for it may choose to.
The preview is a short ``pprint`` text made by the worker, so the server never needs the objects.
"""

from __future__ import annotations

import json
import pprint
from typing import Any

import cloudpickle

PREVIEW_CHARS = 4000
"""Characters of the preview kept in the store (the page shows it; the download has it all)."""


def encode(result: Any) -> tuple[str, bytes]:
    """``("json", utf-8 bytes)`` if the result round-trips through JSON, else ``("pickle", ...)``."""
    try:
        text = json.dumps(result, allow_nan=False)
        if json.loads(text) == result and _same_shape(json.loads(text), result):
            return "json", text.encode()
    except (TypeError, ValueError, RecursionError):
        pass
    return "pickle", cloudpickle.dumps(result)


def _same_shape(decoded: Any, original: Any) -> bool:
    """Whether every scalar kept its exact type: ``==`` alone takes ``1``, ``1.0`` and ``True``
    for one another (containers that JSON changes, like tuples, already fail ``==``)."""
    if isinstance(original, list):
        return all(map(_same_shape, decoded, original))
    if isinstance(original, dict):
        return all(_same_shape(decoded[k], v) for k, v in original.items())
    return type(decoded) is type(original)


def preview(result: Any) -> str:
    """A short text view of the result."""
    text = pprint.pformat(result, sort_dicts=False, width=100)
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "\n..."
