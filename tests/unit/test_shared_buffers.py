"""Pickling with large buffers left out of the stream (``engines/_shared_memory.py``), in-process."""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np
import pytest

from madhatter import depends, parallel, preprocess
from madhatter.engines import _shared_memory as shared_memory
from madhatter.engines._serialize import dumps_function

pytestmark = pytest.mark.skipif(not shared_memory.AVAILABLE, reason="needs memfd_create (Linux)")

MB = 1 << 20


def round_trip(value: Any, *, function: bool = False) -> tuple[Any, shared_memory.Pickled]:
    pickled = shared_memory.dumps(value, function=function)
    layout, fd = pickled.share()
    try:
        return shared_memory.loads(pickled.message(layout), fd), pickled
    finally:
        if fd is not None:
            os.close(fd)


def test_large_arrays_leave_the_stream_and_small_ones_stay() -> None:
    big, small = np.arange(MB, dtype=np.float64), np.arange(10)
    (big_back, small_back), pickled = round_trip((big, small))
    assert pickled.shared_bytes == big.nbytes
    assert len(pickled.data) < 4096
    assert np.array_equal(big_back, big)
    assert np.array_equal(small_back, small)
    big_back[0] = -1.0  # writable, and the sender's array is not touched
    assert big[0] == 0.0


def test_bytes_bytearray_and_memoryview_are_lifted_and_arrive_as_they_always_did() -> None:
    matrix = np.arange(MB // 2, dtype=np.int32).reshape(512, -1)
    value = {"b": b"a" * (2 * MB), "ba": bytearray(b"b" * (2 * MB)), "mv": memoryview(matrix)}
    back, pickled = round_trip(value)
    assert pickled.lifted == 3
    assert pickled.shared_bytes == 4 * MB + matrix.nbytes
    assert type(back["b"]) is bytes
    assert back["b"] == value["b"]
    assert type(back["ba"]) is bytearray
    assert back["ba"] == value["ba"]
    # a memoryview arrives as bytes, lifted or not: what cloudpickle makes of a small one
    small, _ = round_trip(memoryview(b"xyz"))
    assert type(back["mv"]) is type(small) is bytes
    assert back["mv"] == matrix.tobytes()


def test_a_pickle_buffer_arrives_as_a_view_of_the_shared_pages() -> None:
    back, pickled = round_trip(pickle.PickleBuffer(bytearray(b"q" * (2 * MB))))
    assert pickled.shared_bytes == 2 * MB
    assert isinstance(back, memoryview)
    assert back.nbytes == 2 * MB
    assert back[:1] == b"q"


def test_small_values_take_the_one_pass_path_with_nothing_shared() -> None:
    value = [{"key": i, "text": "x" * 20} for i in range(1000)]
    back, pickled = round_trip(value)
    assert back == value
    assert pickled.buffers == []
    assert pickled.share() == ((), None)


def test_what_plain_pickle_refuses_goes_through_cloudpickle_with_its_buffers_shared() -> None:
    value = (lambda: 41, b"z" * (2 * MB), np.ones(MB))
    (function, data, array), pickled = round_trip(value)
    assert function() == 41
    assert data == value[1]
    assert array.sum() == MB
    assert pickled.shared_bytes == 2 * MB + 8 * MB


def test_strided_and_fortran_ordered_arrays_round_trip() -> None:
    strided = np.arange(4 * MB, dtype=np.float64)[::3]
    fortran = np.asfortranarray(np.arange(MB, dtype=np.float64).reshape(1024, -1))
    (strided_back, fortran_back), _ = round_trip((strided, fortran))
    assert np.array_equal(strided_back, strided)
    assert np.array_equal(fortran_back, fortran)
    assert fortran_back.flags.f_contiguous


def test_without_shared_memory_everything_stays_in_the_stream() -> None:
    pickled = shared_memory.dumps(np.ones(MB), shared=False)
    assert pickled.buffers == []
    assert len(pickled.data) > 8 * MB
    assert np.array_equal(shared_memory.loads(pickled.message(())), np.ones(MB))


# -- a step shipped by value does not drag its upstream's data along ---------------------------

HUGE = [bytes(4 * MB)]  # module-level data that only the source step references


def by_value_pipeline() -> tuple[Any, Any]:
    """Steps defined in a function (as in a script's ``__main__``): cloudpickle ships them by
    value, attributes included."""

    @preprocess
    def source() -> list[bytes]:
        return HUGE

    @depends(source)
    @parallel.map
    def length(item: bytes) -> int:
        return len(item)

    return source, length


def test_a_step_pickled_by_value_travels_without_its_decorations() -> None:
    source, length = by_value_pipeline()
    assert length.dependency is source  # the user's view is unchanged
    shipped = dumps_function(length)
    assert len(shipped) < 64 * 1024, f"{len(shipped)} bytes: the upstream's data came along"
    back = pickle.loads(shipped)
    assert back(b"abc") == 3
    assert not hasattr(back, "__madhatter__")
    assert not hasattr(back, "dependency")
    assert not hasattr(back, "__madhatter_local__")
