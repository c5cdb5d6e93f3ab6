"""Stage timing: wall-clock on the host, synchronised with the device when there is one."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class StageTimer:
    """Accumulates milliseconds per named stage.

    ``synchronize`` is called before reading the clock at both ends of a stage, so
    asynchronous devices (CUDA) are timed for the work they did, not its launch.
    """

    def __init__(self, synchronize: Callable[[], None] | None = None):
        self._sync = synchronize or (lambda: None)
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3

    def add(self, name: str, ms: float) -> None:
        self.ms[name] = self.ms.get(name, 0.0) + ms
