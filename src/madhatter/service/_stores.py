"""Open a store by its URL: the one module that knows every back end.

The back ends (``_sqlite``, ``_redis``) implement the interface in ``_store``; only this module
imports them, so nothing imports in a circle. The Redis back end is imported only when a
``redis://`` URL asks for it, since it needs the ``redis`` library of the ``web`` extra.
"""

from __future__ import annotations

import os
import urllib.parse

from .._errors import MadhatterError
from ._sqlite import SQLiteStore
from ._store import DEFAULT_MAX_LOST, Store

DEFAULT_BROKER = "sqlite:///madhatter.db"
"""The store when none is named: a SQLite file in the current directory."""


class StoreError(MadhatterError):
    """A store URL is malformed or names a scheme no back end handles."""


def store_url(url: str | None = None) -> str:
    """``url``, else ``$MADHATTER_BROKER``, else :data:`DEFAULT_BROKER`."""
    return url or os.environ.get("MADHATTER_BROKER") or DEFAULT_BROKER


def open_store(url: str | None = None, *, max_lost: int = DEFAULT_MAX_LOST) -> Store:
    """The store at ``url``: ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or
    ``redis://host:port/db``. Defaults as :func:`store_url` says."""
    url = store_url(url)
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme == "sqlite":
        path = url.removeprefix("sqlite://").removeprefix("/")
        if not path:
            raise StoreError(f"store URL {url!r} names no file (e.g. sqlite:///madhatter.db)")
        return SQLiteStore(path, url=url, max_lost=max_lost)
    if scheme in ("redis", "rediss", "unix"):
        from ._redis import RedisStore

        return RedisStore(url, max_lost=max_lost)
    raise StoreError(f"unknown store URL {url!r}: use sqlite:///FILE or redis://HOST:PORT/DB")
