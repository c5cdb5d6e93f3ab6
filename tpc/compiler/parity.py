"""Comparison rules every parity check shares: tolerances, closeness, kept-index verdicts."""

from __future__ import annotations

import numpy as np

RTOL = 1e-3
ATOL = 1e-4
TIE_RTOL = 1e-6  # scores this close to the k-th score count as tied


def close(actual: np.ndarray, expected: np.ndarray) -> tuple[bool, float]:
    diff = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    return diff <= ATOL + RTOL * float(np.max(np.abs(expected), initial=0.0)), diff


def compare_indices(actual: np.ndarray, expected: np.ndarray, scores: np.ndarray | None) -> str:
    """'exact', 'tie-equivalent' (differs only among scores tied at the k-th), or 'mismatch'."""
    if np.array_equal(actual, expected):
        return "exact"
    if scores is None or actual.shape != expected.shape:
        return "mismatch"
    for got, want, row in zip(actual, expected, scores, strict=True):
        if np.array_equal(got, want):
            continue
        kth = np.sort(row)[::-1][len(want) - 1]
        differing = np.setxor1d(got, want)
        if len(set(got.tolist())) != len(got) or np.any(np.abs(row[differing] - kth) > TIE_RTOL * abs(kth)):
            return "mismatch"
    return "tie-equivalent"
