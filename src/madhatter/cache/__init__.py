"""The chunk cache: step results filed under keys that say which code made them from what.

``_fingerprint`` says what a step's code is (its own source without docstrings, comments or
formatting, the helpers and constants it uses in the user's modules, the versions of the
distributions it imports, the run parameters it reads); ``_keys`` files each result under its
step's fingerprint and its input's key; ``_store`` keeps the entries (a local folder or an
fsspec URL). The driver (``driver/_stage_cache.py``) looks results up before it launches a chunk;
the chain (``driver/_chain.py``) writes them as each chunk finishes. See docs/caching.md.
"""

from __future__ import annotations

import os

from ._store import CacheStore

DEFAULT_FOLDER = ".madhatter"
"""Where ``cache=True`` keeps the cache, in the current folder (``madhatter run FILE --cache``:
beside the pipeline file)."""


def open_cache(cache: str | os.PathLike[str] | CacheStore | bool | None) -> CacheStore | None:
    """The store a run's ``cache=`` option names: ``None``/``False`` for none, ``True`` for
    :data:`DEFAULT_FOLDER`, a folder or fsspec URL, or a store."""
    if cache is None or cache is False:
        return None
    if isinstance(cache, CacheStore):
        return cache
    return CacheStore.open(DEFAULT_FOLDER if cache is True else cache)


__all__ = ["DEFAULT_FOLDER", "CacheStore", "open_cache"]
