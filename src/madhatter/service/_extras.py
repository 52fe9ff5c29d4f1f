"""Import the service's optional libraries, or say which extra installs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from .._errors import MissingExtraError


def require_web(module: str) -> ModuleType:
    """Import ``module``, or raise MissingExtraError naming ``madhatter[web]``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module.partition(".")[0]:
            raise  # something else is broken: show the real error
        raise MissingExtraError(
            f"the madhatter service needs {module!r}: pip install 'madhatter[web]'"
        ) from None
