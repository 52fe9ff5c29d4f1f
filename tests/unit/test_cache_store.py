"""The cache's storage layer: entries round-trip, are never seen half-written, and damage is caught.

Real processes write concurrently, a real tmpfs fills up (when the tests run as root), and a
killed writer really dies mid-write; fsspec's ``memory://`` filesystem stands in for an object
store.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import pathlib
import pickle
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from madhatter import CacheCorruptionWarning, CacheWriteError, MadhatterError, MissingExtraError
from madhatter.cache._store import MAGIC, CacheStore, FingerprintRecord

FP = "0123456789abcdef0123456789abcdef"
OTHER_FP = "fedcba9876543210fedcba9876543210"


def _key(n: int) -> str:
    return f"{n:032x}"


def _chunk(start: int, size: int = 5) -> list[tuple[str, list[Any]]]:
    """Records for items ``start .. start + size``: each item's outputs are ``[n, str(n)]``."""
    return [(_key(n), [n, str(n)]) for n in range(start, start + size)]


def _entries(root: pathlib.Path, pattern: str = "*.mhc") -> list[pathlib.Path]:
    return sorted((root / "madhatter-cache-v1").rglob(pattern))


@pytest.fixture
def store(tmp_path: pathlib.Path) -> CacheStore:
    return CacheStore.open(tmp_path / "cache")


# -- round trip and layout -----------------------------------------------------------------------


def test_written_chunks_come_back_by_item_key(store: CacheStore) -> None:
    store.write("score", FP, _chunk(0))
    store.write(
        "score", FP, [(_key(100), [{"a": 1}, None]), (_key(101), []), (_key(102), [lambda x: x + 1])]
    )
    index = store.index("score", FP)

    assert len(index) == 8
    assert set(index.keys()) == {_key(n) for n in [0, 1, 2, 3, 4, 100, 101, 102]}
    assert _key(3) in index
    assert index.get(_key(3)) == [3, "3"]
    assert index.get(_key(100)) == [{"a": 1}, None]
    assert index.get(_key(101)) == []
    outputs = index.get(_key(102))
    assert outputs is not None
    assert outputs[0](1) == 2  # a lambda: written with cloudpickle when pickle refuses it
    assert index.get(_key(999)) is None
    assert _key(999) not in index


def test_an_entry_is_filed_by_step_fingerprint_and_keys(
    store: CacheStore, tmp_path: pathlib.Path
) -> None:
    store.write("score", FP, _chunk(0))
    store.write("score", FP, _chunk(0))  # the same chunk again (a second run): the same file
    store.write("score", OTHER_FP, _chunk(0))
    store.write("clean", FP, [])  # nothing to write: no file
    entries = _entries(tmp_path / "cache")

    assert [p.relative_to(tmp_path / "cache" / "madhatter-cache-v1").parts[:2] for p in entries] == [
        ("score", FP),
        ("score", OTHER_FP),
    ]
    assert entries[0].name == entries[1].name
    assert entries[0].name.endswith("-5.mhc")
    assert entries[0].read_bytes().startswith(MAGIC)
    assert len(store.index("score", FP)) == 5
    assert len(store.index("score", OTHER_FP)) == 5
    assert len(store.index("clean", FP)) == 0
    assert not (tmp_path / "cache" / "madhatter-cache-v1" / "clean").exists()


def test_nothing_is_created_until_something_is_written(tmp_path: pathlib.Path) -> None:
    store = CacheStore.open(tmp_path / "not-yet")
    assert len(store.index("score", FP)) == 0
    assert store.summary() == []
    assert store.fingerprints("score") == []
    assert store.clear() == 0
    assert not (tmp_path / "not-yet").exists()


def test_step_names_are_made_safe_without_colliding(store: CacheStore, tmp_path: pathlib.Path) -> None:
    names = ["a/b", "a<b", "../up", "<lambda>", "mod.Class.method", "..", "é", "Load", "load", "x" * 300]
    for n, name in enumerate(names):
        store.write(name, FP, _chunk(10 * n))
    top = tmp_path / "cache" / "madhatter-cache-v1"
    assert len({p.name for p in top.iterdir()}) == len(names)
    assert all(p.parent == top for p in top.iterdir())  # nothing escaped the cache directory
    for n, name in enumerate(names):
        assert store.index(name, FP).get(_key(10 * n)) == [10 * n, str(10 * n)]


def test_a_fingerprint_must_be_a_plain_name(store: CacheStore) -> None:
    with pytest.raises(ValueError, match="fingerprint"):
        store.write("score", "../../etc", _chunk(0))


def test_the_store_pickles_as_its_location(store: CacheStore) -> None:
    store.write("score", FP, _chunk(0))
    store.index("score", FP)  # opened: the copy must not carry what opening made
    data = pickle.dumps(store)
    copy = pickle.loads(data)

    assert copy.location == store.location
    assert len(data) < 200 + len(store.location)
    assert copy.index("score", FP).get(_key(0)) == [0, "0"]


def test_a_write_error_pickles_with_its_fields() -> None:
    error = pickle.loads(pickle.dumps(CacheWriteError("/x", "score", "no space")))
    assert isinstance(error, MadhatterError)
    assert (error.location, error.step, error.reason) == ("/x", "score", "no space")
    assert str(error) == "cannot write the cache of step 'score' to /x: no space"


# -- damage is caught, reported and removed ---------------------------------------------------


@pytest.mark.parametrize(
    "keep", [0, 5, 20, -40, -1], ids=["empty", "in-magic", "in-header", "in-payload", "in-checksum"]
)
def test_a_truncated_entry_is_skipped_warned_and_deleted(
    store: CacheStore, tmp_path: pathlib.Path, keep: int
) -> None:
    store.write("score", FP, _chunk(0))
    store.write("score", FP, [(_key(10), ["x" * 100])])
    damaged = next(p for p in _entries(tmp_path / "cache") if p.name.endswith("-1.mhc"))
    damaged.write_bytes(damaged.read_bytes()[:keep])

    with pytest.warns(CacheCorruptionWarning, match=f"{damaged.name}.*step 'score'"):
        index = store.index("score", FP)
    assert _key(10) not in index
    assert len(index) == 5
    assert not damaged.exists()  # so that it is recomputed and rewritten


@pytest.mark.parametrize(
    ("offset", "reason"), [(0, "bad magic"), (30, "checksum"), (-30, "checksum"), (-1, "checksum")]
)
def test_a_flipped_byte_is_caught(
    store: CacheStore, tmp_path: pathlib.Path, offset: int, reason: str
) -> None:
    store.write("score", FP, _chunk(0))
    (entry,) = _entries(tmp_path / "cache")
    data = bytearray(entry.read_bytes())
    data[offset] ^= 0x40
    entry.write_bytes(bytes(data))

    with pytest.warns(CacheCorruptionWarning, match=reason):
        assert len(store.index("score", FP)) == 0
    assert not entry.exists()


def test_an_entry_filed_in_the_wrong_place_is_not_trusted(
    store: CacheStore, tmp_path: pathlib.Path
) -> None:
    store.write("score", FP, _chunk(0))
    (entry,) = _entries(tmp_path / "cache")
    moved = tmp_path / "cache" / "madhatter-cache-v1" / "score" / OTHER_FP / entry.name
    moved.parent.mkdir()
    entry.rename(moved)
    with pytest.warns(CacheCorruptionWarning, match="belongs to step 'score', fingerprint '0123"):
        assert len(store.index("score", OTHER_FP)) == 0


def test_outputs_that_no_longer_unpickle_are_dropped_on_first_use(
    store: CacheStore, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "mh_cache_gone.py"
    module.write_text("class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import mh_cache_gone  # type: ignore[import-not-found]

    store.write("score", FP, [(_key(1), [mh_cache_gone.Thing()])])
    store.write("score", FP, _chunk(10))
    module.unlink()
    monkeypatch.delitem(sys.modules, "mh_cache_gone")

    index = store.index("score", FP)  # the checksums are fine: the outputs are not unpickled yet
    assert len(index) == 6
    with pytest.warns(CacheCorruptionWarning, match="cannot be unpickled.*mh_cache_gone"):
        assert index.get(_key(1)) is None
    assert _key(1) not in index
    assert len(index) == 5
    assert index.get(_key(10)) == [10, "10"]
    assert len(_entries(tmp_path / "cache")) == 1


# -- atomic writes -------------------------------------------------------------------------------

KILLED_WRITER = """
import os, sys
from madhatter.cache import _store

def die_half_written(source, target):
    os.truncate(source, os.stat(source).st_size // 2)
    os._exit(7)  # killed before the rename: no cleanup, no atexit

_store.os.replace = die_half_written
store = _store.CacheStore.open(sys.argv[1])
store.write("score", "0123456789abcdef0123456789abcdef", [(f"{n:032x}", [n] * 1000) for n in range(50)])
"""


def test_a_writer_killed_mid_write_leaves_no_visible_entry(
    store: CacheStore, tmp_path: pathlib.Path
) -> None:
    store.write("score", FP, _chunk(100))
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, str(script), store.location], env=env, timeout=60)
    assert result.returncode == 7

    (leftover,) = _entries(tmp_path / "cache", ".*.tmp")  # the half-written temporary file
    assert leftover.stat().st_size > 0
    index = store.index("score", FP)  # no warning: the half-written file is not an entry
    assert set(index.keys()) == {_key(n) for n in range(100, 105)}
    assert store.summary()[0].entries == 1

    assert store.clear(older_than=0) == 1  # the complete entry; the leftover goes too
    assert _entries(tmp_path / "cache", "*") == []


def _write_chunks(location: str, chunks: list[int], start: Any) -> None:
    """A worker process: wait for the others, then write the chunks starting at these items."""
    store = CacheStore.open(location)
    start.wait()
    for first in chunks:
        store.write("score", FP, _chunk(first))


def test_processes_writing_at_once_leave_exactly_the_union(
    store: CacheStore, tmp_path: pathlib.Path
) -> None:
    shared = [5 * n for n in range(120)]  # both processes write these chunks
    own = {0: [10_000 + 5 * n for n in range(100)], 1: [20_000 + 5 * n for n in range(100)]}
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(3)
    workers = [
        context.Process(target=_write_chunks, args=(store.location, shared + own[w], start))
        for w in (0, 1)
    ]
    for worker in workers:
        worker.start()
    start.wait(timeout=60)
    seen = []
    while any(w.is_alive() for w in workers):  # read while they write: never a damaged entry
        seen.append(len(store.index("score", FP)))
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0

    index = store.index("score", FP)
    expected = {n for first in shared + own[0] + own[1] for n in range(first, first + 5)}
    assert set(index.keys()) == {_key(n) for n in expected}
    assert all(index.get(_key(n)) == [n, str(n)] for n in expected)
    assert len(_entries(tmp_path / "cache")) == 120 + 200
    assert _entries(tmp_path / "cache", ".*") == []  # no temporary file left behind
    assert seen == sorted(seen)


@pytest.fixture
def tiny_disk(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """A real 64 KiB tmpfs, mounted for the test (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs to fill it up needs root")
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_a_full_disk_raises_and_leaves_no_partial_file(tiny_disk: pathlib.Path) -> None:
    store = CacheStore.open(tiny_disk)
    store.write("score", FP, _chunk(0))
    big = [(_key(n), [os.urandom(1024)]) for n in range(100, 200)]  # 100 KiB: more than the disk

    with pytest.raises(
        CacheWriteError, match=rf"step 'score' to {re.escape(str(tiny_disk))}: no space left"
    ) as caught:
        store.write("score", FP, big)
    assert caught.value.__cause__.errno == errno.ENOSPC  # type: ignore[union-attr]
    assert len(_entries(tiny_disk)) == 1
    assert _entries(tiny_disk, ".*") == []  # the temporary file was removed
    assert set(store.index("score", FP).keys()) == {_key(n) for n in range(5)}
    store.write("score", FP, _chunk(50))  # the space came back: the cache still works
    assert len(store.index("score", FP)) == 10


def test_a_failing_rename_raises_and_leaves_no_partial_file(
    store: CacheStore, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same without root: the last step fails with a full disk (a unit edge; the tmpfs
    test above fills a real disk)."""

    def full(source: str, target: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("madhatter.cache._store.os.replace", full)
    with pytest.raises(CacheWriteError, match=r"step 'score' to .*cache: no space left"):
        store.write("score", FP, _chunk(0))
    assert _entries(tmp_path / "cache", "*.*") == []


def test_unpicklable_outputs_raise_a_write_error(store: CacheStore, tmp_path: pathlib.Path) -> None:
    import threading

    with pytest.raises(CacheWriteError, match="outputs cannot be pickled"):
        store.write("score", FP, [(_key(0), [threading.Lock()])])
    assert _entries(tmp_path / "cache", "*.*") == []


# -- records, summary, clear ---------------------------------------------------------------------


def test_remembered_fingerprints_come_back_newest_first(store: CacheStore) -> None:
    store.remember("score", FP, {"code": "abc", "params": "n=1"})
    time.sleep(0.01)
    store.remember("score", OTHER_FP, {"code": "def", "params": "n=1"})
    first = store.fingerprints("score")
    assert [r.fingerprint for r in first] == [OTHER_FP, FP]
    assert first[1].parts == {"code": "abc", "params": "n=1"}

    time.sleep(0.01)
    store.remember("score", FP, {"code": "abc", "params": "n=1"})  # used again: only the time moves
    again = store.fingerprints("score")
    assert [r.fingerprint for r in again] == [FP, OTHER_FP]
    assert again[0].last_used > first[1].last_used
    assert again[0] == FingerprintRecord(FP, {"code": "abc", "params": "n=1"}, again[0].last_used)
    assert store.fingerprints("clean") == []


def test_summary_counts_entries_items_and_bytes(store: CacheStore, tmp_path: pathlib.Path) -> None:
    store.remember("mod.<lambda>", FP, {"code": "x"})
    store.write("mod.<lambda>", FP, _chunk(0, 3))
    store.write("score", FP, _chunk(0))
    store.write("score", FP, _chunk(5, 7))
    store.write("score", OTHER_FP, _chunk(0))
    rows = store.summary()

    assert [(r.step, r.fingerprint, r.entries, r.items) for r in rows] == [
        ("mod.<lambda>", FP, 1, 3),  # the real name, from the record
        ("score", OTHER_FP, 1, 5),  # newest first within a step
        ("score", FP, 2, 12),
    ]
    score = tmp_path / "cache" / "madhatter-cache-v1" / "score" / FP
    assert rows[2].bytes == sum(p.stat().st_size for p in score.glob("*.mhc"))
    assert rows[2].newest == max(p.stat().st_mtime for p in score.glob("*.mhc"))


def test_clear_removes_what_is_asked(store: CacheStore, tmp_path: pathlib.Path) -> None:
    for first in range(0, 50, 5):
        store.write("score", FP, _chunk(first))
    store.write("clean", FP, _chunk(0))
    store.remember("clean", FP, {"code": "x"})
    old = time.time() - 7200
    for entry in sorted((tmp_path / "cache" / "madhatter-cache-v1" / "score").rglob("*.mhc"))[:4]:
        os.utime(entry, (old, old))

    assert store.clear(older_than=3600) == 4
    assert len(store.index("score", FP)) == 50 - 20
    assert len(store.index("clean", FP)) == 5
    assert store.clear("score") == 6
    assert len(store.index("score", FP)) == 0
    assert store.fingerprints("clean") != []
    assert store.clear() == 1
    assert store.summary() == []


def test_clear_older_than_drops_a_fingerprint_left_empty(
    store: CacheStore, tmp_path: pathlib.Path
) -> None:
    store.remember("score", FP, {"code": "x"})
    store.write("score", FP, _chunk(0))
    old = time.time() - 7200
    for path in (tmp_path / "cache").rglob("*.*"):
        os.utime(path, (old, old))
    assert store.clear(older_than=60) == 1
    assert store.fingerprints("score") == []
    assert store.summary() == []


# -- locations -----------------------------------------------------------------------------------


def test_file_urls_and_paths_need_no_fsspec(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)  # as if it were not installed
    CacheStore.open(tmp_path / "a").write("score", FP, _chunk(0))
    from_url = CacheStore.open(f"file://{tmp_path}/a")
    assert from_url.index("score", FP).get(_key(0)) == [0, "0"]
    assert pickle.loads(pickle.dumps(from_url)).location == f"file://{tmp_path}/a"

    with pytest.raises(MissingExtraError, match=r"pip install 'madhatter\[fsspec\]'"):
        CacheStore.open("s3://bucket/cache")


@pytest.fixture
def memory_url() -> Iterator[str]:
    fsspec = pytest.importorskip("fsspec", reason="the fsspec tests need fsspec (pip install fsspec)")
    url = f"memory://madhatter-test-{uuid.uuid4().hex}"
    yield url
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def test_an_fsspec_url_round_trips(memory_url: str) -> None:
    store = CacheStore.open(memory_url)
    store.remember("score", FP, {"code": "abc"})
    store.write("score", FP, _chunk(0))
    store.write("score", FP, _chunk(5, 3))
    copy = pickle.loads(pickle.dumps(store))
    index = copy.index("score", FP)

    assert copy.location == memory_url
    assert len(index) == 8
    assert index.get(_key(6)) == [6, "6"]
    assert [r.parts for r in copy.fingerprints("score")] == [{"code": "abc"}]
    ((row),) = copy.summary()
    assert (row.step, row.fingerprint, row.entries, row.items) == ("score", FP, 2, 8)
    assert row.bytes > 0
    assert row.newest is not None


def test_damage_on_an_fsspec_url_is_caught(memory_url: str) -> None:
    import fsspec

    store = CacheStore.open(memory_url)
    store.write("score", FP, _chunk(0))
    fs, root = fsspec.core.url_to_fs(memory_url)
    (path,) = fs.find(root)
    fs.pipe_file(path, fs.cat_file(path)[:-3])
    with pytest.warns(CacheCorruptionWarning, match="truncated"):
        assert len(store.index("score", FP)) == 0
    assert not fs.exists(path)
    assert store.clear() == 0


# -- speed ---------------------------------------------------------------------------------------


def test_indexing_a_thousand_entries_is_quick(
    store: CacheStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """Printed, not asserted (shared machines vary 2x): 1,000 entries of 200 items each."""
    for entry in range(1000):
        records = [
            (_key(200 * entry + i), [{"id": i, "name": f"item {i}", "score": i / 3}]) for i in range(200)
        ]
        store.write("score", FP, records)
    timings = []
    for _ in range(3):
        began = time.perf_counter()
        index = store.index("score", FP)
        indexed = time.perf_counter() - began
        values = sum(len(index.get(key) or ()) for key in list(index.keys()))
        timings.append((indexed, time.perf_counter() - began - indexed))
    assert len(index) == values == 200_000
    best = min(timings)
    with capsys.disabled():
        print(
            f"\n  cache index of 1,000 entries x 200 items: {best[0] * 1000:.0f} ms "
            f"(+{best[1] * 1000:.0f} ms to unpickle every output)"
        )
