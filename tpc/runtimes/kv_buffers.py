"""KV caches a decoder graph appends to in place (``tpc.kv_buffer = shared``: ``GroupQueryAttention``).

The runtime binds one ``[B, Nkv, capacity, D]`` array as both a layer's past and its present; ONNX
Runtime writes the step's keys and values at the cache length and reads the first ``T`` rows, so no
step copies the cache. What the decoder driver holds between steps are views ``buffer[:, :, :T]``
(their shapes and byte counts are those of the cache's content). A view is appended to in place only
when it is the one its buffer's last call handed out; otherwise (an older view of a cache that a later
call has extended since, an array from elsewhere, too little room) its rows are copied into a fresh
buffer first, so a cache that is continued twice never has its first continuation overwritten.
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
    """The buffers of one decoder graph, and the view of each that was handed out last."""

    def __init__(self, limit: int | None = None):
        self.limit = limit
        self._latest: dict[int, tuple[int, int]] = {}  # id(buffer) -> (id(view), rows) of the last write
        self._lock = threading.RLock()  # a buffer freed during a call (finalize) takes it again

    def for_call(self, past: list, new: int) -> list[np.ndarray]:
        """The buffers to bind for a call that appends ``new`` rows to each cache in ``past``: a buffer's own
        latest view is appended to in place when it has room; anything else is copied into a fresh buffer."""
        with self._lock:
            out = []
            for p in past:
                base = getattr(p, "base", None)
                latest = self._latest.get(id(base)) if isinstance(base, np.ndarray) else None
                if latest == (id(p), p.shape[2]) and base.shape[2] >= p.shape[2] + new:
                    out.append(base)
                else:
                    out.append(self._fresh(p.numpy() if hasattr(p, "numpy") else np.asarray(p), new))
            return out

    def written(self, buffers: list[np.ndarray], total: int) -> list[np.ndarray]:
        """Record that ``total`` rows of each buffer now hold the cache; the views the driver keeps."""
        views = [buffer[:, :, :total] for buffer in buffers]
        with self._lock:
            for buffer, view in zip(buffers, views, strict=True):
                self._latest[id(buffer)] = (id(view), total)
        return views

    def _fresh(self, past: np.ndarray, new: int) -> np.ndarray:
        b, heads, length, dim = past.shape
        buffer = np.zeros((b, heads, capacity_for(length + new, self.limit), dim), np.float32)
        buffer[:, :, :length] = past
        self._latest[id(buffer)] = (0, length)  # no view of it yet: only this call appends to it
        weakref.finalize(buffer, self._forget, id(buffer))
        return buffer

    def _forget(self, key: int) -> None:
        with self._lock:
            self._latest.pop(key, None)
