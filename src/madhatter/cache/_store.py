"""Where cached step results live: one file per completed chunk, filed by step and fingerprint.

The layout, under the location the user gave (a local directory or an fsspec URL)::

    <root>/madhatter-cache-v1/<step>/<fingerprint>/<digest>-<items>.mhc   a chunk's results
    <root>/madhatter-cache-v1/<step>/<fingerprint>/fingerprint.json       the fingerprint's parts

An entry's name is the BLAKE2b digest of its item keys (and how many there are), so two runs that
compute the same chunk write the same name, and the last complete write wins. An entry is::

    b"MHCACHE1\\n"  | header length (8 bytes, big-endian) | header | payload length | payload | checksum

where the header is the pickle of a small dict (the item keys, step, fingerprint, time, format),
the payload the pickle (protocol 5; cloudpickle when the standard pickle refuses) of the outputs
lists in key order, and the checksum the 16-byte BLAKE2b of header and payload.

Nobody ever reads half an entry. A local entry is written to a temporary file beside it, flushed
to disk, then renamed over its final name (``os.replace`` is atomic on POSIX), so a killed writer
leaves only a hidden ``.*.tmp`` file that ``clear`` removes. On an object store (``s3://``, ...)
one ``pipe`` of the whole blob is atomic by itself. Whatever still goes wrong (a disk bit flip, a
truncating copy, a non-atomic fsspec filesystem) is caught by the length and checksum checks: the
entry is skipped with a :class:`CacheCorruptionWarning` and deleted, so it is simply recomputed.

Only the standard library and cloudpickle are needed for local directories (``file://`` URLs
included); fsspec is imported for other URLs only, as the ``madhatter[fsspec]`` extra.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import importlib
import json
import os
import pickle
import re
import secrets
import shutil
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, KeysView, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import cloudpickle

from .._errors import CacheCorruptionWarning, CacheWriteError, MissingExtraError
from .._version import __version__

MAGIC = b"MHCACHE1\n"
FORMAT = 1
"""The entry format's version, written into each header (the magic and the ``-v1`` directory
change with it)."""
ROOT_DIR = "madhatter-cache-v1"
ENTRY_SUFFIX = ".mhc"
FINGERPRINT_FILE = "fingerprint.json"
_LENGTH = struct.Struct(">Q")
_CHECKSUM_BYTES = 16
_FINGERPRINT = re.compile(r"[0-9A-Za-z]{1,128}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_ENTRY_NAME = re.compile(r"[0-9a-f]{32}-([0-9]+)\.mhc")


@dataclass(frozen=True)
class FingerprintRecord:
    """A step fingerprint recorded by :meth:`CacheStore.remember`: the parts it was made of (for
    ``madhatter cache explain``) and when a run last used it (seconds since the epoch)."""

    fingerprint: str
    parts: Mapping[str, str]
    last_used: float


@dataclass(frozen=True)
class StepSummary:
    """What the cache holds for one step and fingerprint (a row of ``madhatter cache ls``);
    ``newest`` is the time of the newest entry, ``None`` when there is none."""

    step: str
    fingerprint: str
    entries: int
    items: int
    bytes: int
    newest: float | None


class StepIndex:
    """The cached outputs of one step and fingerprint, by item key.

    Built from the entries' headers alone: an entry's outputs are unpickled when one of its keys
    is first asked for, so a run that finds a later step cached never pays for the earlier
    steps' outputs. Every entry's checksum was verified when the index was built; should its
    outputs still fail to unpickle (a class that no longer imports), the entry is dropped with a
    :class:`CacheCorruptionWarning` and deleted, ``get`` returns ``None`` and its keys leave the
    index, as if it had never been written. Safe to share between threads.
    """

    __slots__ = ("_discard", "_entries", "_lock", "_step")

    def __init__(self, step: str, discard: Callable[[str], None]) -> None:
        self._step, self._discard = step, discard
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<StepIndex of step {self._step!r}: {len(self._entries)} items>"

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: str) -> list[Any] | None:
        """The outputs cached for the item ``key``, or ``None`` if it has none."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.outputs is None:
            with self._lock:
                if entry.outputs is None:
                    self._load(entry)
        return entry.outputs.get(key) if entry.outputs is not None else None

    def keys(self) -> KeysView[str]:
        """The item keys that have cached outputs."""
        return self._entries.keys()

    def _add(self, entry: _Entry) -> None:
        self._entries.update(dict.fromkeys(entry.keys, entry))

    def _load(self, entry: _Entry) -> None:
        assert entry.payload is not None
        try:
            values = pickle.loads(entry.payload)
            if not isinstance(values, list) or len(values) != len(entry.keys):
                raise _Corrupt("its keys and outputs do not match")
        except Exception as exc:
            reason = str(exc) if isinstance(exc, _Corrupt) else f"cannot be unpickled: {_describe(exc)}"
            _warn_corrupt(entry.path, self._step, reason, stacklevel=4)
            self._discard(entry.path)
            for key in entry.keys:
                if self._entries.get(key) is entry:
                    del self._entries[key]
            entry.outputs = {}
        else:
            entry.outputs = dict(zip(entry.keys, values, strict=True))
        entry.payload = None


class _Entry:
    """One entry file in an index: its keys, and its payload until it is unpickled."""

    __slots__ = ("keys", "outputs", "path", "payload")

    def __init__(self, path: str, keys: list[str], payload: memoryview) -> None:
        self.path, self.keys = path, keys
        self.payload: memoryview | None = payload
        self.outputs: dict[str, list[Any]] | None = None


class CacheStore:
    """The cache at one location: a local directory (created when first written) or an fsspec URL.

    A store pickles as its location alone and reopens on first use, so the driver can hand it to
    worker processes, on this machine or (with a shared URL) on others.
    """

    def __init__(self, location: str, local_root: str | None) -> None:
        self.location = location
        self._local_root = local_root
        self._files: _Files | None = None

    @classmethod
    def open(cls, location: str | os.PathLike[str]) -> CacheStore:
        """The store at ``location``: a path, a ``file://`` URL, or any other fsspec URL.

        Raises:
            MissingExtraError: a non-local URL was given and fsspec is not installed.
        """
        text = os.fspath(location)
        if "://" not in text and "::" not in text:
            path = os.path.abspath(os.path.expanduser(text))
            return cls(path, path)
        if text.startswith("file://"):  # as fsspec reads it: file:///abs, or file://relative
            return cls(text, os.path.abspath(text.removeprefix("file://")))
        _import_fsspec()  # fail on the driver, at once, rather than in every worker
        return cls(text, None)

    def __reduce__(self) -> tuple[Any, ...]:
        return (CacheStore.open, (self.location,))

    def __repr__(self) -> str:
        return f"CacheStore({self.location!r})"

    # -- the driver's calls ------------------------------------------------------------------

    def write(self, step: str, fingerprint: str, records: Sequence[tuple[str, list[Any]]]) -> None:
        """Store one chunk's results, ``(item key, outputs)`` pairs, as one entry, atomically.

        Raises:
            CacheWriteError: the entry could not be written (nothing partial is left visible).
        """
        if not records:
            return
        keys = [key for key, _ in records]
        directory = self._dir(step, fingerprint)
        blob = self._encode(step, fingerprint, keys, [outputs for _, outputs in records])
        digest = hashlib.blake2b("\n".join(keys).encode(), digest_size=16).hexdigest()
        try:
            self._io.write_atomic(directory, f"{digest}-{len(keys)}{ENTRY_SUFFIX}", blob)
        except OSError as exc:
            raise CacheWriteError(self.location, step, _describe(exc)) from exc

    def has_entries(self, step: str, fingerprint: str) -> bool:
        """Whether anything is filed for ``step`` under ``fingerprint`` (a listing, no reads)."""
        directory = self._dir(step, fingerprint)
        return any(f.name.endswith(ENTRY_SUFFIX) for f in self._io.listing(directory))

    def index(self, step: str, fingerprint: str) -> StepIndex:
        """Every cached output of ``step`` under ``fingerprint``, by item key.

        A damaged entry is skipped with a :class:`CacheCorruptionWarning` and deleted, so that its
        chunk is recomputed (and rewritten) by the run.
        """
        directory = self._dir(step, fingerprint)
        paths = sorted(f.path for f in self._io.listing(directory) if f.name.endswith(ENTRY_SUFFIX))
        index = StepIndex(step, self._io.remove)
        for path, data in self._io.read_many(paths):
            if isinstance(data, FileNotFoundError):
                continue  # cleared since it was listed
            try:
                if isinstance(data, Exception):
                    raise _Corrupt(f"unreadable: {_describe(data)}")
                keys, payload = _open_entry(data, step, fingerprint)
            except _Corrupt as exc:
                _warn_corrupt(path, step, str(exc), stacklevel=3)
                self._io.remove(path)
                continue
            index._add(_Entry(path, keys, payload))
        return index

    def remember(self, step: str, fingerprint: str, description: Mapping[str, str]) -> None:
        """Record what ``fingerprint`` was made of, and that a run uses it now (for ``cache
        explain``). Calling it again only moves ``last_used``.

        Raises:
            CacheWriteError: the record could not be written.
        """
        directory = self._dir(step, fingerprint)
        now = time.time()
        previous = self._read_record(self._io.join(directory, FINGERPRINT_FILE)) or {}
        record = {
            "step": step,
            "fingerprint": fingerprint,
            "parts": dict(description),
            "created": previous.get("created", now),
            "last_used": now,
            "format": FORMAT,
        }
        blob = json.dumps(record, indent=1, sort_keys=True).encode()
        try:
            self._io.write_atomic(directory, FINGERPRINT_FILE, blob)
        except OSError as exc:
            raise CacheWriteError(self.location, step, _describe(exc)) from exc

    def fingerprints(self, step: str) -> list[FingerprintRecord]:
        """The fingerprints recorded for ``step``, the most recently used first."""
        found = []
        step_dir = self._io.join(self._base, _safe_name(step))
        for directory in self._io.listing(step_dir):
            record = self._read_record(self._io.join(directory.path, FINGERPRINT_FILE))
            if record is not None:
                found.append(
                    FingerprintRecord(
                        str(record.get("fingerprint", directory.name)),
                        dict(record.get("parts", {})),
                        float(record.get("last_used", 0.0)),
                    )
                )
        return sorted(found, key=lambda r: r.last_used, reverse=True)

    def summary(self) -> list[StepSummary]:
        """One row per step and fingerprint: entries, items, bytes and the newest entry's time,
        sorted by step, then newest first. Reads only the listing and the small records."""
        groups: dict[tuple[str, str], list[_File]] = {}
        for file in self._io.listing(self._base, recursive=True):
            parts = file.relative.split("/")
            if len(parts) == 3:
                groups.setdefault((parts[0], parts[1]), []).append(file)
        rows = []
        for (step_dir, fingerprint), files in groups.items():
            entries = [f for f in files if _ENTRY_NAME.fullmatch(f.name)]
            record = self._read_record(
                self._io.join(self._base, step_dir, fingerprint, FINGERPRINT_FILE)
            )
            rows.append(
                StepSummary(
                    step=str(record["step"]) if record and "step" in record else step_dir,
                    fingerprint=fingerprint,
                    entries=len(entries),
                    items=sum(_items(f.name) for f in entries),
                    bytes=sum(f.size for f in entries),
                    newest=max((f.mtime for f in entries), default=None),
                )
            )
        rows.sort(key=lambda r: -(r.newest or 0.0))
        return sorted(rows, key=lambda r: r.step)

    def clear(self, step: str | None = None, *, older_than: float | None = None) -> int:
        """Remove cached entries, of one step or of all, and return how many were removed.

        Without ``older_than`` whole fingerprint directories go (their records too). With it,
        only entries last written more than ``older_than`` seconds ago go (and leftovers of killed
        writers of that age), then the records of fingerprints left with no entry that were not
        used since either, then the directories left empty.
        """
        top = self._base if step is None else self._io.join(self._base, _safe_name(step))
        files = self._io.listing(top, recursive=True)
        if older_than is None:
            self._io.remove_tree(top)
            return sum(1 for f in files if f.name.endswith(ENTRY_SUFFIX))
        cutoff = time.time() - older_than
        removed, kept, records = 0, set(), []
        for file in files:
            if file.name == FINGERPRINT_FILE:
                records.append(file)
            elif file.mtime < cutoff:
                self._io.remove(file.path)
                removed += file.name.endswith(ENTRY_SUFFIX)
            else:
                kept.add(_parent(file.path))
        for record in records:
            if record.mtime < cutoff and _parent(record.path) not in kept:
                self._io.remove(record.path)
        directories = {_parent(file.path) for file in files}
        for directory in sorted(directories | {_parent(d) for d in directories}, key=len, reverse=True):
            self._io.remove_empty_dir(directory)  # deepest first; refused if anything is left
        return removed

    # -- the inside ----------------------------------------------------------------------------

    @property
    def _io(self) -> _Files:
        if self._files is None:
            self._files = (
                _LocalFiles(self._local_root) if self._local_root else _FsspecFiles(self.location)
            )
        return self._files

    @property
    def _base(self) -> str:
        return self._io.join(self._io.root, ROOT_DIR)

    def _dir(self, step: str, fingerprint: str) -> str:
        if not _FINGERPRINT.fullmatch(fingerprint):
            raise ValueError(
                f"a step fingerprint must be 1 to 128 letters or digits, not {fingerprint!r}"
            )
        return self._io.join(self._base, _safe_name(step), fingerprint)

    def _encode(self, step: str, fingerprint: str, keys: list[str], outputs: list[list[Any]]) -> bytes:
        header = pickle.dumps(
            {
                "keys": keys,
                "step": step,
                "fingerprint": fingerprint,
                "created": time.time(),
                "format": FORMAT,
                "madhatter": __version__,
            },
            protocol=5,
        )
        try:
            payload = pickle.dumps(outputs, protocol=5)
        except Exception:
            try:
                payload = cloudpickle.dumps(outputs, protocol=5)
            except Exception as exc:
                raise CacheWriteError(
                    self.location, step, f"its outputs cannot be pickled: {_describe(exc)}"
                ) from exc
        checksum = hashlib.blake2b(header, digest_size=_CHECKSUM_BYTES)
        checksum.update(payload)
        return b"".join(
            (
                MAGIC,
                _LENGTH.pack(len(header)),
                header,
                _LENGTH.pack(len(payload)),
                payload,
                checksum.digest(),
            )
        )

    def _read_record(self, path: str) -> dict[str, Any] | None:
        """A ``fingerprint.json``, or ``None`` if it is missing or unreadable (a record is only
        a description: a damaged one is rewritten by the next ``remember``)."""
        for _, data in self._io.read_many([path]):
            if isinstance(data, bytes):
                with contextlib.suppress(ValueError):
                    record = json.loads(data)
                    if isinstance(record, dict):
                        return record
        return None


class _Corrupt(Exception):
    """An entry failed a check; the message says which."""


def _open_entry(data: bytes, step: str, fingerprint: str) -> tuple[list[str], memoryview]:
    """The item keys and the (still pickled) outputs of an entry, after checking its magic,
    lengths, checksum and header."""
    view = memoryview(data)
    if not data.startswith(MAGIC):
        raise _Corrupt("not a madhatter cache entry (bad magic)")
    at = len(MAGIC)
    sections = []
    for _ in range(2):
        if len(view) < at + _LENGTH.size:
            raise _Corrupt("truncated")
        (length,) = _LENGTH.unpack_from(view, at)
        at += _LENGTH.size
        sections.append(view[at : at + length])
        at += length
    if len(view) != at + _CHECKSUM_BYTES:
        raise _Corrupt("truncated" if len(view) < at + _CHECKSUM_BYTES else "trailing bytes")
    header, payload = sections
    checksum = hashlib.blake2b(header, digest_size=_CHECKSUM_BYTES)
    checksum.update(payload)
    if checksum.digest() != view[at:]:
        raise _Corrupt("checksum mismatch")
    try:
        meta = pickle.loads(header)
        keys = meta["keys"]
    except Exception as exc:
        raise _Corrupt(f"its header cannot be unpickled: {_describe(exc)}") from exc
    if meta.get("step") != step or meta.get("fingerprint") != fingerprint:
        raise _Corrupt(
            f"it belongs to step {meta.get('step')!r}, fingerprint {meta.get('fingerprint')!r}"
        )
    return keys, payload


def _warn_corrupt(path: str, step: str, reason: str, *, stacklevel: int) -> None:
    warnings.warn(
        CacheCorruptionWarning(
            f"skipped the damaged cache entry {path} of step {step!r} ({reason}); "
            f"it was deleted and will be recomputed"
        ),
        stacklevel=stacklevel,
    )


def _safe_name(step: str) -> str:
    """A directory name for ``step``: the name itself when it is safe everywhere, else a cleaned
    copy plus a digest of the real name, so that ``a<b`` and ``a>b`` stay apart, and ``Load`` and
    ``load`` too on a file system that ignores case (macOS's, by default)."""
    safe = _UNSAFE.sub("_", step)[:80].lstrip(".")
    if safe == step and safe and step == step.lower():
        return safe
    return f"{safe or 'step'}-{hashlib.blake2b(step.encode(), digest_size=4).hexdigest()}"


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0]


def _items(name: str) -> int:
    match = _ENTRY_NAME.fullmatch(name)
    return int(match.group(1)) if match else 0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on the device (free some, or run `madhatter cache clear`)"
    return f"{type(exc).__name__}: {exc}"


def _import_fsspec() -> Any:
    try:
        return importlib.import_module("fsspec")
    except ModuleNotFoundError as exc:
        if exc.name != "fsspec":
            raise  # something inside fsspec is broken: show the real error
        raise MissingExtraError(
            "a cache at a non-local URL needs 'fsspec': pip install 'madhatter[fsspec]'"
        ) from None


# -- file systems: the few operations the store needs, local and fsspec -------------------------


class _File(NamedTuple):
    path: str
    name: str
    relative: str  # to the listed directory, "/"-separated
    size: int
    mtime: float


class _Files(Protocol):
    root: str

    def join(self, *parts: str) -> str: ...
    def write_atomic(self, directory: str, name: str, blob: bytes) -> None: ...
    def read_many(self, paths: list[str]) -> Iterator[tuple[str, bytes | Exception]]: ...
    def listing(self, directory: str, *, recursive: bool = False) -> list[_File]: ...
    def remove(self, path: str) -> None: ...
    def remove_tree(self, path: str) -> None: ...
    def remove_empty_dir(self, path: str) -> None: ...


class _LocalFiles:
    """A local directory, with POSIX paths (``/`` is the separator the store splits on)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def join(self, *parts: str) -> str:
        return "/".join(parts)

    def write_atomic(self, directory: str, name: str, blob: bytes) -> None:
        """Write to a hidden temporary file beside the target and rename it over the target; on
        any error remove the temporary file. Created with ``open`` rather than ``mkstemp`` so
        that the umask, not ``0600``, decides who else may read a shared cache.

        No ``fsync``: the rename makes the entry whole to every reader, and a process killed at
        any point leaves the page cache intact. Only a power loss or a kernel crash can leave an
        entry short, which its checksum reveals (it is then recomputed); an ``fsync`` per entry
        cost W3 a fifth of its run time."""
        temporary = f"{directory}/.{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            fd = os.open(temporary, flags, 0o666)
        except FileNotFoundError:  # the first write there, or cleared meanwhile
            os.makedirs(directory, exist_ok=True)
            fd = os.open(temporary, flags, 0o666)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(blob)
            os.replace(temporary, f"{directory}/{name}")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def read_many(self, paths: list[str]) -> Iterator[tuple[str, bytes | Exception]]:
        for path in paths:
            try:
                with open(path, "rb") as file:
                    yield path, file.read()
            except OSError as exc:
                yield path, exc

    def listing(self, directory: str, *, recursive: bool = False) -> list[_File]:
        found: list[_File] = []
        self._scan(directory, "", recursive, found)
        return found

    def _scan(self, directory: str, prefix: str, recursive: bool, found: list[_File]) -> None:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            relative = prefix + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        self._scan(entry.path, relative + "/", recursive, found)
                    else:
                        found.append(_File(entry.path, entry.name, relative, 0, 0.0))
                    continue
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while listed
            found.append(_File(entry.path, entry.name, relative, stat.st_size, stat.st_mtime))

    def remove(self, path: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)

    def remove_tree(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def remove_empty_dir(self, path: str) -> None:
        with contextlib.suppress(OSError):
            os.rmdir(path)


class _FsspecFiles:
    """Any fsspec filesystem. One ``pipe`` of the whole blob is the atomic write (object stores
    make a PUT visible whole or not at all); reads are batched into one ``cat``, which async
    filesystems such as s3fs run concurrently."""

    def __init__(self, location: str) -> None:
        self.fs, self.root = _import_fsspec().core.url_to_fs(location)
        self.root = self.root.rstrip("/")

    def join(self, *parts: str) -> str:
        return "/".join(parts)

    def write_atomic(self, directory: str, name: str, blob: bytes) -> None:
        try:
            self.fs.makedirs(directory, exist_ok=True)
            self.fs.pipe_file(f"{directory}/{name}", blob)
        except OSError:
            raise
        except Exception as exc:  # a client library's own error: the store reports OSErrors
            raise OSError(f"{type(exc).__name__}: {exc}") from exc

    def read_many(self, paths: list[str]) -> Iterator[tuple[str, bytes | Exception]]:
        if not paths:
            return
        found = self.fs.cat(paths, on_error="return")
        for path in paths:
            data = found.get(path, FileNotFoundError(path))
            yield path, data if isinstance(data, (bytes, Exception)) else bytes(data)

    def listing(self, directory: str, *, recursive: bool = False) -> list[_File]:
        prefix = directory.rstrip("/") + "/"
        try:
            if recursive:
                infos: Iterable[dict[str, Any]] = self.fs.find(directory, detail=True).values()
            else:
                infos = self.fs.ls(directory, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for info in infos:
            path = str(info["name"]).rstrip("/")
            if not path.startswith(prefix):
                continue
            relative = path[len(prefix) :]
            size = int(info.get("size") or 0) if info.get("type") != "directory" else 0
            found.append(_File(path, relative.rsplit("/", 1)[-1], relative, size, _modified(info)))
        return found

    def remove(self, path: str) -> None:
        with contextlib.suppress(OSError):
            self.fs.rm_file(path)

    def remove_tree(self, path: str) -> None:
        with contextlib.suppress(OSError):
            self.fs.rm(path, recursive=True)

    def remove_empty_dir(self, path: str) -> None:
        with contextlib.suppress(Exception):  # object stores have no directories to remove
            self.fs.rmdir(path)


def _modified(info: Mapping[str, Any]) -> float:
    """A listing's modification time, whatever an fsspec implementation calls it."""
    for name in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value = info.get(name)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.timezone.utc)
            return value.timestamp()
    return 0.0
