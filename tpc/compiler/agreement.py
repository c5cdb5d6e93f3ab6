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


def greedy_verdict(got: np.ndarray, features: np.ndarray, got_features: np.ndarray) -> str:
    """'near-tie' or 'mismatch' for DivPrune's max-min greedy, which ranks tokens by no single score.

    ``got`` [B, K]: the graph's kept indices (each row sorted); ``got_features`` [B, K, D]: its features of
    them; ``features`` [B, N, D]: the fp32 reference's features of every token. The graph's pick order is
    recovered from its own features (after the first pick, each pick is the kept token farthest from the
    picks before it), and each pick is scored under fp32 distances given the picks before it: it must lie
    within ``NEAR_TIE`` of the best score of any token left. So every pick of the graph was, under fp32,
    as good as the greedy's own up to rounding: half precision moved a near-tie, and from there the greedy
    went its own, equally valid way. The first pick (ranked by every token's nearest neighbour, which the
    graph's outputs do not hold) is each kept token within ``NEAR_TIE`` of the fp32 best in turn.
    """
    for row, sample, mine in zip(got, features, got_features, strict=True):
        row = np.asarray(row, np.int64)
        distance, own = _cosine_distance(sample), _cosine_distance(mine)
        nearest = np.where(np.eye(len(distance), dtype=bool), np.inf, distance).min(axis=1)
        best = nearest.max()
        firsts = [i for i in range(len(row)) if nearest[row[i]] >= best - NEAR_TIE * abs(best)]
        if not any(_replay(row, distance, own, first) for first in firsts):
            return "mismatch"
    return "near-tie"


def _cosine_distance(features: np.ndarray) -> np.ndarray:
    unit = features.astype(np.float64)
    unit /= np.maximum(np.linalg.norm(unit, axis=-1, keepdims=True), 1e-12)
    return 1.0 - unit @ unit.T


def _replay(row: np.ndarray, distance: np.ndarray, own: np.ndarray, first: int) -> bool:
    """The graph's picks after ``first`` (its order from ``own``), each within NEAR_TIE of fp32's best."""
    chosen = np.zeros(len(distance), bool)
    chosen[row[first]] = True
    picked = np.zeros(len(row), bool)
    picked[first] = True
    score, running = distance[row[first]].copy(), own[first].copy()
    for _ in range(len(row) - 1):
        pick = int(np.argmax(np.where(picked, -np.inf, running)))
        best = np.where(chosen, -np.inf, score).max()
        if score[row[pick]] < best - NEAR_TIE * abs(best):
            return False
        chosen[row[pick]], picked[pick] = True, True
        score, running = np.minimum(score, distance[row[pick]]), np.minimum(running, own[pick])
    return True
