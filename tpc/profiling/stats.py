"""Percentile summaries of repeated measurements."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STATS = ("p50", "p90", "p99", "min", "max")


def summarize(samples: Sequence[float]) -> dict:
    """p50/p90/p99/min/max/mean of ``samples`` (linear interpolation), with the samples."""
    values = np.asarray(list(samples), dtype=np.float64)
    if values.size == 0:
        raise ValueError("no samples to summarize")
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "p50": round(float(p50), 4),
        "p90": round(float(p90), 4),
        "p99": round(float(p99), 4),
        "min": round(float(values.min()), 4),
        "max": round(float(values.max()), 4),
        "mean": round(float(values.mean()), 4),
        "n": int(values.size),
        "samples": [round(float(v), 4) for v in values],
    }
