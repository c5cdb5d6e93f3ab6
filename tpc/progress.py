"""Stage progress: a live status line on a terminal, one plain line per stage otherwise (CI logs)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class StageProgress:
    """``progress(stage)`` callback for long work; shows "[i/n] stage" with elapsed time.

    On a terminal the line updates in place; when stderr is not a terminal (CI, a pipe,
    a log file) every stage prints one line with the time since the start, so a long
    compile is never silent.
    """

    def __init__(self, total: int, quiet: bool = False, title: str = "", stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total, self.title = total, title
        self.index = 0
        self.started = time.perf_counter()
        self._status = None

    @property
    def enabled(self) -> bool:
        return not self.quiet

    def _text(self, stage: str) -> str:
        return f"{self.title}[{min(self.index, self.total)}/{self.total}] {stage}"

    def __call__(self, stage: str) -> None:
        self.index += 1
        if self.quiet:
            return
        if not self.interactive:
            elapsed = time.perf_counter() - self.started
            print(f"{self._text(stage)} (+{elapsed:.1f} s)", file=self.stream, flush=True)
            return
        if self._status is None:
            from rich.console import Console

            self._status = Console(file=self.stream).status(self._text(stage))
            self._status.start()
        else:
            self._status.update(self._text(stage))

    def add_stages(self, count: int) -> None:
        """Stages the work found it needs once started (e.g. a reference computed before the graphs load)."""
        self.total += count

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    @contextmanager
    def running(self) -> Iterator[StageProgress]:
        try:
            yield self
        finally:
            self.close()
