"""Digests of values: canonical, and stable across processes and runs.

A fingerprint hashes constants, module-level data, run parameters and the driver's other inputs by
value. Nothing here may depend on ``id()``, ``hash()`` or memory addresses: common built-in types
are encoded structurally, sets with their elements sorted by digest (their iteration order changes
with string hash randomisation), and anything else is pickled with a fixed protocol by the
pure-Python pickler, which can be told to sort sets too.
"""

from __future__ import annotations

import enum
import hashlib
import pickle
import re
from typing import Any

import cloudpickle

DIGEST_SIZE = 16
"""Bytes of blake2b output: 32 hex characters, as the chunk cache's keys."""

PICKLE_PROTOCOL = 5
"""Fixed, so that a digest does not change with the interpreter's default protocol."""

_CONSTANT_TYPES = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis))
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_CONTAINER_TAGS: dict[type, bytes] = {tuple: b"t", list: b"l", dict: b"d", set: b"S", frozenset: b"Z"}


class TooLarge(Exception):
    """Raised by :class:`Feed` past its limit, to stop hashing (and pickling) early."""


class Feed:
    """A blake2b hasher with a file's ``write``, counting bytes against an optional limit, so that
    pickling can stream into it and stop at the limit instead of building the bytes first."""

    __slots__ = ("hasher", "limit", "size")

    def __init__(self, limit: int | None) -> None:
        self.hasher = hashlib.blake2b(digest_size=DIGEST_SIZE)
        self.size = 0
        self.limit = limit

    def write(self, data: bytes | bytearray | memoryview) -> int:
        size = memoryview(data).nbytes
        self.size += size
        if self.limit is not None and self.size > self.limit:
            raise TooLarge
        self.hasher.update(data)
        return size

    def child(self) -> Feed:
        """A fresh hasher sharing what is left of this one's limit (for sub-digests)."""
        return Feed(None if self.limit is None else self.limit - self.size)


def value_digest(value: object) -> str:
    """A digest (32 hex characters) of ``value``'s content, stable across processes and runs.

    Common built-in types are encoded structurally, each with a type tag (so ``1``, ``1.0`` and
    ``True`` differ): ``None``, ``bool``, ``int``, ``float`` (exactly, via ``float.hex``),
    ``complex``, ``str``, ``bytes``, ``bytearray``, ``tuple``, ``list``, ``dict``, ``set``,
    ``frozenset`` and enum members. Sets are hashed with their elements sorted by digest, because
    their iteration order changes with string hash randomisation. Dicts keep insertion order: it is
    deterministic for a deterministic program, and a step that iterates a dict sees it, so two dicts
    in different orders are different inputs. Anything else is pickled (protocol 5, the pure-Python
    pickler with sets sorted as above; cloudpickle if plain pickle refuses) and the pickle hashed.
    Functions and classes inside a value pickle by reference, so only their names count here; the
    code they run is what :func:`~madhatter.cache._fingerprint.fingerprint_step` follows.

    Raises:
        TypeError: ``value`` (or something in it) cannot be pickled.
    """
    return bounded_digest(value, None)


def bounded_digest(value: object, limit: int | None) -> str:
    """:func:`value_digest` with an optional limit in bytes; raises :class:`TooLarge` past it."""
    feed = Feed(limit)
    try:
        feed_value(feed, value, [])
    except RecursionError:
        raise TypeError(f"{type(value).__qualname__} is nested too deeply to hash") from None
    return feed.hasher.hexdigest()


def feed_value(feed: Feed, value: object, path: list[object]) -> None:
    """Write the canonical encoding of ``value`` into ``feed``; ``path`` holds the containers
    being encoded, so that a container inside itself is written as a back reference."""
    kind = type(value)
    if value is None or value is Ellipsis:
        feed.write(b"N" if value is None else b"E")
    elif kind is bool:
        feed.write(b"T" if value else b"F")
    elif kind is int:
        feed.write(b"i%s;" % hex(value).encode())  # type: ignore[arg-type]
    elif kind is float:
        feed.write(b"f%s;" % value.hex().encode())  # type: ignore[attr-defined]
    elif kind is complex:
        feed.write(b"c%s,%s;" % (value.real.hex().encode(), value.imag.hex().encode()))  # type: ignore[attr-defined]
    elif kind is str:
        data = value.encode("utf-8", "surrogatepass")  # type: ignore[attr-defined]
        feed.write(b"s%d:" % len(data))
        feed.write(data)
    elif kind is bytes or kind is bytearray:
        feed.write(b"%s%d:" % (b"b" if kind is bytes else b"y", len(value)))  # type: ignore[arg-type]
        feed.write(value)  # type: ignore[arg-type]
    elif isinstance(value, enum.Enum):
        feed.write(b"e%s:" % f"{kind.__module__}.{kind.__qualname__}.{value.name}".encode())
        feed_value(feed, value.value, path)
    elif kind in (tuple, list, dict, set, frozenset):
        for depth, container in enumerate(path):
            if container is value:
                feed.write(b"R%d;" % depth)
                return
        path.append(value)
        _feed_container(feed, value, path)
        path.pop()
    else:
        child = feed.child()
        _pickle_into(child, value)
        feed.size += child.size
        feed.write(b"P" + child.hasher.digest())


def _feed_container(feed: Feed, value: Any, path: list[object]) -> None:
    tag = _CONTAINER_TAGS[type(value)]
    feed.write(b"%s%d:" % (tag, len(value)))
    if isinstance(value, dict):
        for key, item in value.items():
            feed_value(feed, key, path)
            feed_value(feed, item, path)
    elif isinstance(value, (set, frozenset)):
        digests = []
        for item in value:
            child = feed.child()
            feed_value(child, item, path)
            feed.size += child.size
            digests.append(child.hasher.digest())
        for digest in sorted(digests):
            feed.write(digest)
    else:
        for item in value:
            feed_value(feed, item, path)


class _CanonicalPickler(pickle._Pickler):
    """The pure-Python pickler, writing sets with their elements sorted by digest (the C pickler
    writes exact sets itself, in iteration order, which string hash randomisation changes)."""

    def reducer_override(self, obj: object) -> Any:
        if type(obj) is set or type(obj) is frozenset:
            return type(obj), (sorted(obj, key=value_digest),)
        return NotImplemented


def _pickle_into(feed: Feed, value: object) -> None:
    """Pickle ``value`` into ``feed``: canonically if possible, else with cloudpickle (which can
    pickle lambdas and local classes, though not always identically across processes)."""
    try:
        _CanonicalPickler(feed, protocol=PICKLE_PROTOCOL).dump(value)
        return
    except TooLarge:
        raise
    except Exception as exc:
        first = exc
    retry = Feed(feed.limit)
    try:
        cloudpickle.CloudPickler(retry, protocol=PICKLE_PROTOCOL).dump(value)
    except TooLarge:
        raise
    except Exception:
        reason = _ADDRESS.sub("", f"{type(first).__name__}: {first}")
        raise TypeError(f"a {type(value).__qualname__} cannot be hashed by value ({reason})") from None
    feed.hasher, feed.size = retry.hasher, retry.size


def is_constant(value: object) -> bool:
    """Whether ``value`` is immutable data: the constant types, enum members, and tuples and
    frozensets of them."""
    if isinstance(value, enum.Enum) or type(value) in _CONSTANT_TYPES:
        return True
    if type(value) is tuple or type(value) is frozenset:
        return all(is_constant(item) for item in value)
    return False
