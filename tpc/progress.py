"""Stage progress on the terminal: a live status line, silent when not a terminal."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator


class StageProgress:
    """``progress(stage)`` callback for long work; shows "[i/n] stage" with elapsed time."""

    def __init__(self, total: int, quiet: bool = False, title: str = ""):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = not quiet and self.console.is_terminal
        self.total, self.title = total, title
        self.index = 0
        self.started = time.perf_counter()
        self._status = None

    def __call__(self, stage: str) -> None:
        self.index += 1
        if not self.enabled:
            return
        text = f"{self.title}[{min(self.index, self.total)}/{self.total}] {stage}"
        if self._status is None:
            self._status = self.console.status(text)
            self._status.start()
        else:
            self._status.update(text)

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    @contextmanager
    def running(self) -> Iterator["StageProgress"]:
        try:
            yield self
        finally:
            self.close()
