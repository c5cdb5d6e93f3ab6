"""Agreement measures of a reduced-precision graph against the fp32 reference: the cosine of outputs and
the verdict on kept indices (exact, a near-tie that rounding may reorder, or a mismatch).

Shared by the vision / flat-decoder check (``verify_precision``) and the staged-decoder check
(``verify_llm_precision``).
"""

from __future__ import annotations

import numpy as np

NEAR_TIE = 1e-2  # relative distance to the k-th score within which half precision may reorder


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of the last axis."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def index_verdict(got: np.ndarray, want: np.ndarray, scores: np.ndarray | None) -> tuple[str, float]:
    """('exact' | 'near-tie' | 'mismatch', mean overlap of the kept sets)."""
    overlap = float(np.mean([len(np.intersect1d(g, w)) / max(len(w), 1) for g, w in zip(got, want, strict=True)]))
    if np.array_equal(got, want):
        return "exact", overlap
    if scores is None or got.shape != want.shape:
        return "mismatch", overlap
    for g, w, row in zip(got, want, scores, strict=True):
        kth = np.sort(row)[::-1][len(w) - 1]
        differing = np.setxor1d(g, w)
        if np.any(np.abs(row[differing] - kth) > NEAR_TIE * abs(kth)):
            return "mismatch", overlap
    return "near-tie", overlap
