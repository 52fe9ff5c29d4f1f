"""Import the service's optional libraries, or say which extra installs them."""

from __future__ import annotations

from types import ModuleType

from ..engines import require_extra


def require_web(module: str) -> ModuleType:
    """Import ``module``, or raise MissingExtraError naming ``madhatter[web]``."""
    return require_extra(module, extra="web", needed_by="the madhatter service")
