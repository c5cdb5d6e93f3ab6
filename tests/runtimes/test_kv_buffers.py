"""KV buffers a GroupQueryAttention decoder appends to in place: when a cache is appended to where it lies,
when it is copied into a fresh buffer first (too little room, a fork, an array from elsewhere)."""

from __future__ import annotations

import numpy as np

from tpc.runtimes.kv_buffers import ALIGN, HEADROOM, KVBuffers, capacity_for


def _step(buffers: KVBuffers, past: list, new: int, value: float) -> list[np.ndarray]:
    """What ONNX Runtime does with the bound buffers: write ``new`` rows after the past's."""
    bound = buffers.for_call(past, new)
    length = past[0].shape[2]
    for buffer in bound:
        buffer[:, :, length : length + new] = value
    return buffers.written(bound, length + new)


def test_capacity_leaves_room_and_respects_the_context():
    assert capacity_for(10) == -(-(10 + HEADROOM) // ALIGN) * ALIGN
    assert capacity_for(1000) % ALIGN == 0 and capacity_for(1000) >= 1500
    assert capacity_for(10, limit=100) == 100
    assert capacity_for(120, limit=100) == 120  # never less than what must fit


def test_steps_append_in_place_and_views_show_the_content():
    buffers = KVBuffers()
    past = [np.ones((2, 3, 5, 4), np.float32), np.full((2, 3, 5, 4), 2, np.float32)]
    present = _step(buffers, past, 1, 7)
    base = [p.base for p in present]
    for i in range(3):
        present = _step(buffers, present, 1, 8 + i)
    assert [p.base for p in present] == base  # no copy after the first call
    assert present[0].shape == (2, 3, 9, 4) and present[0].nbytes == 2 * 3 * 9 * 4 * 4
    np.testing.assert_array_equal(present[0][0, 0, :, 0], [1, 1, 1, 1, 1, 7, 8, 9, 10])
    np.testing.assert_array_equal(present[1][1, 2, :5, 3], [2] * 5)


def test_a_full_buffer_grows_with_its_content():
    buffers = KVBuffers()
    present = _step(buffers, [np.zeros((1, 1, 0, 2), np.float32)], 3, 1)
    capacity = present[0].base.shape[2]
    grown = _step(buffers, present, capacity - 3 + 1, 2)  # one row more than the room left
    assert grown[0].base is not present[0].base and grown[0].base.shape[2] > capacity
    np.testing.assert_array_equal(grown[0][0, 0, :, 0], [1, 1, 1] + [2] * (capacity - 2))


def test_continuing_one_cache_twice_keeps_both_continuations():
    buffers = KVBuffers()
    prompt = _step(buffers, [np.zeros((1, 1, 0, 1), np.float32)], 4, 1)
    first = _step(buffers, prompt, 1, 5)
    second = _step(buffers, prompt, 1, 6)  # the prompt's cache again: copied, not written over
    assert first[0].base is prompt[0].base and second[0].base is not prompt[0].base
    np.testing.assert_array_equal(first[0][0, 0, :, 0], [1, 1, 1, 1, 5])
    np.testing.assert_array_equal(second[0][0, 0, :, 0], [1, 1, 1, 1, 6])


def test_arrays_from_elsewhere_are_copied():
    buffers = KVBuffers()
    outside = np.arange(8, dtype=np.float32).reshape(1, 1, 8, 1)
    present = _step(buffers, [outside[:, :, :4]], 1, 9)  # a view of an array tpc did not allocate
    np.testing.assert_array_equal(outside[0, 0, :, 0], np.arange(8))
    np.testing.assert_array_equal(present[0][0, 0, :, 0], [0, 1, 2, 3, 9])
