"""KV caches a decoder graph appends to in place (``tpc.kv_buffer = shared``: ``GroupQueryAttention``).

The runtime binds one ``[B, Nkv, capacity, D]`` array as both a layer's past and its present; ONNX
Runtime writes the step's keys and values at the cache length and reads the first ``T`` rows, so no
step copies the cache. What the decoder driver holds between steps are views ``buffer[:, :, :T]``
(their shapes and byte counts are those of the cache's content). A view is appended to in place only
when it ends where its buffer was last written; otherwise (a view of a cache that another call has
extended since, an array from elsewhere, too little room) its rows are copied into a fresh buffer first,
so a cache that is continued twice never has its first continuation overwritten.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

HEADROOM = 256  # rows beyond the current length a fresh buffer gets (decode steps before a regrowth)
ALIGN = 64


def capacity_for(total: int, limit: int | None = None) -> int:
    """Rows of a fresh buffer that must hold ``total``: room for ``HEADROOM`` steps or half as many again,
    rounded up to ``ALIGN``, never past ``limit`` (the graph's context) unless ``total`` is."""
    capacity = -(-(total + max(HEADROOM, total // 2)) // ALIGN) * ALIGN
    return max(total, min(capacity, limit)) if limit else capacity


class KVBuffers:
    """The buffers of one decoder graph and how far each was written."""

    def __init__(self, limit: int | None = None):
        self.limit = limit
        self._written: dict[int, int] = {}  # id(buffer) -> rows written
        self._lock = threading.Lock()

    def for_call(self, past: list, new: int) -> list[np.ndarray]:
        """The buffers to bind for a call that appends ``new`` rows to each cache in ``past``."""
        return [self._buffer(np.asarray(p) if not hasattr(p, "numpy") else p.numpy(), new) for p in past]

    def written(self, buffers: list[np.ndarray], total: int) -> list[np.ndarray]:
        """Record that ``total`` rows of each buffer now hold the cache; the views the driver keeps."""
        with self._lock:
            for buffer in buffers:
                self._written[id(buffer)] = total
        return [buffer[:, :, :total] for buffer in buffers]

    def _buffer(self, past: np.ndarray, new: int) -> np.ndarray:
        length = past.shape[2]
        base = past.base
        with self._lock:
            in_place = (
                isinstance(base, np.ndarray)
                and self._written.get(id(base)) == length
                and base.ndim == 4
                and base.flags.c_contiguous
                and base.dtype == np.float32
                and base.shape[2] >= length + new
                and (base.shape[:2], base.shape[3]) == (past.shape[:2], past.shape[3])
                and past.__array_interface__["data"][0] == base.__array_interface__["data"][0]
            )
        if in_place:
            return base
        b, heads, _, dim = past.shape
        buffer = np.zeros((b, heads, capacity_for(length + new, self.limit), dim), np.float32)
        buffer[:, :, :length] = past
        with self._lock:
            self._written[id(buffer)] = length
        weakref.finalize(buffer, self._forget, id(buffer))
        return buffer

    def _forget(self, key: int) -> None:
        with self._lock:
            self._written.pop(key, None)
