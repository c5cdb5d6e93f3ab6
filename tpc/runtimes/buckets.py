"""Vision for bucketed artifacts: encoder, the selector of the chosen bucket(s), projector."""

from __future__ import annotations

import math

import numpy as np

from tpc.artifact_layout import ADAPTIVE, ENCODER, PROJECTOR, bucket_selector_name
from tpc.errors import UsageError


def bucket_for(count: int, buckets: list[int]) -> int:
    """Smallest compiled bucket holding ``count`` tokens (never fewer than asked)."""
    for size in buckets:
        if size >= count:
            return size
    raise UsageError(
        f"{count} visual tokens is more than the largest compiled bucket ({buckets[-1]}); "
        f"compiled buckets: {', '.join(map(str, buckets))}"
    )


def bucket_histogram(counts: list[int], buckets: list[int]) -> dict[str, int]:
    return {str(b): int(sum(1 for c in counts if c == b)) for b in buckets}


class BucketedVision:
    """``__call__(pixel_values) -> (features [B,Kmax,D], kept [B,Kmax], counts [B])``.

    Fixed budget: every sample uses ``keep`` (a compiled bucket). Adaptive artifacts:
    each sample's count from the encoder, rounded up to its bucket (capped at the
    largest). Rows past a sample's count are padding (features 0, indices -1).
    """

    def __init__(self, graphs, info: dict, runtime: dict):
        self.graphs = graphs
        self.buckets = list(info["sizes"])
        self.names = list(info["encoder_outputs"])
        self.adaptive = bool(info.get("adaptive"))
        self.has_projector = PROJECTOR in info["graphs"]
        self.keep = runtime["keep"]

    def request(self, keep: int | None = None, ratio: float | None = None, num_patches: int = 576) -> int:
        """Choose the bucket for a fixed budget (``--keep`` or ``--ratio``), rounding up."""
        if self.adaptive and (keep is not None or ratio is not None):
            raise UsageError("this artifact chooses its budget per image (cls-mass); --keep/--ratio do not apply")
        if keep is None and ratio is not None:
            keep = max(1, math.ceil(num_patches * (1.0 - ratio) - 1e-9))
        if keep is not None:
            self.keep = bucket_for(keep, self.buckets)
        return self.keep

    def __call__(self, pixel_values: np.ndarray):
        encoded = dict(zip(self.names, self.graphs.run_graph(ENCODER, {"pixel_values": pixel_values}), strict=True))
        batch = pixel_values.shape[0]
        if self.adaptive:
            counts = [min(bucket_for(int(c), self.buckets + [10**9]), self.buckets[-1]) for c in encoded[ADAPTIVE]]
        else:
            counts = [self.keep] * batch
        inputs = [n for n in self.names if n != ADAPTIVE]
        width = max(counts)
        features = kept = None
        for size in sorted(set(counts)):
            rows = [i for i, c in enumerate(counts) if c == size]
            feeds = {n: encoded[n][rows] for n in inputs}
            indices, tokens = self.graphs.run_graph(bucket_selector_name(size), feeds)
            if self.has_projector:
                (tokens,) = self.graphs.run_graph(PROJECTOR, {"tokens": tokens})
            if features is None:
                features = np.zeros((batch, width, tokens.shape[-1]), dtype=np.float32)
                kept = np.full((batch, width), -1, dtype=np.int64)
            features[rows, :size] = tokens
            kept[rows, :size] = indices
        return features, kept, counts
