"""Load a pipeline's module from a file path or a dotted module name (for the CLI and ``run``).

A file is imported under its stem as module name (``examples/words.py`` -> ``words``) and registered
with cloudpickle to be pickled *by value*, so its steps reach workers that could not import it.
"""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import sys
from types import ModuleType

import cloudpickle

from ._errors import PipelineDefinitionError


def load_module(target: str | pathlib.Path) -> ModuleType:
    """Import ``target``: a ``.py`` file path, or an importable module name."""
    path = pathlib.Path(target)
    if path.suffix == ".py" or path.exists():
        return _load_file(path)
    try:
        return importlib.import_module(str(target))
    except ModuleNotFoundError as exc:
        if exc.name != str(target).split(".")[0] and exc.name != str(target):
            raise
        raise PipelineDefinitionError(
            f"no file or module named {str(target)!r} (give a path to a .py file or a module name)"
        ) from None


def _load_file(path: pathlib.Path) -> ModuleType:
    if not path.is_file():
        raise PipelineDefinitionError(f"no pipeline file at {str(path)!r}")
    name = path.stem if path.stem.isidentifier() else "madhatter_pipeline"
    spec = importlib.util.spec_from_file_location(name, path.resolve())
    if spec is None or spec.loader is None:
        raise PipelineDefinitionError(f"cannot import {str(path)!r} as Python")
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
        raise
    cloudpickle.register_pickle_by_value(module)
    return module
