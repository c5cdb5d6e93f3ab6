"""What the operator sets with ``tpc serve``'s options, checked before the model loads."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tpc.errors import UsageError


@dataclass(frozen=True)
class ServeSettings:
    model_name: str | None = None  # the name clients pass as "model" (None: the artifact's model id)
    max_batch: int = 8  # most requests one generate call runs together
    queue_size: int = 64  # most requests waiting for the worker; one more is answered 429
    timeout_s: float = 600.0  # from arrival to the last token; then 504 (or an error event when streaming)
    allow_local_dir: Path | None = None  # image paths inside this directory are read; None: data: URLs only
    max_image_bytes: int = 20 * 2**20  # encoded size of one image
    max_image_pixels: int = 40_000_000  # width x height of one image (decompression bombs)
    default_max_tokens: int = 256  # when a request gives no max_tokens (capped by the context)
    batch_window_ms: float = 5.0  # how long the worker waits for requests arriving together

    def check(self) -> ServeSettings:
        """One ``UsageError`` line per bad value (exit 2)."""
        if self.model_name is not None and not self.model_name.strip():
            raise UsageError("--model-name is empty")
        for name, value in (
            ("--max-batch", self.max_batch),
            ("--queue-size", self.queue_size),
            ("--max-image-bytes", self.max_image_bytes),
            ("--max-image-pixels", self.max_image_pixels),
            ("--default-max-tokens", self.default_max_tokens),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be a positive integer, got {value}")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise UsageError(f"--timeout must be a positive number of seconds, got {self.timeout_s}")
        if not (math.isfinite(self.batch_window_ms) and self.batch_window_ms >= 0):
            raise UsageError(f"--batch-window-ms must be >= 0, got {self.batch_window_ms}")
        if self.allow_local_dir is not None and not Path(self.allow_local_dir).is_dir():
            raise UsageError(f"--allow-local-dir {self.allow_local_dir}: not a directory")
        return self

    @property
    def max_body_bytes(self) -> int:
        """A request body large enough for one image at the limit in base64, plus 1 MiB of text."""
        return self.max_image_bytes * 4 // 3 + 4 + 2**20
