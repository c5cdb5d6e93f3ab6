"""The verdicts on a reduced-precision graph's kept indices: top-k near-ties, and DivPrune's greedy replayed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tpc.compiler.agreement import greedy_verdict, index_verdict
from tpc.methods.divprune import naive_divprune


def _at(features: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """What the graph outputs: the features of its kept tokens (half-precision rounding here)."""
    return np.take_along_axis(features, kept[..., None], axis=1).astype(np.float16)


def _features(seed: int = 0, n: int = 48, d: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, n, d)).astype(np.float32)


def test_the_fp32_greedys_own_set_passes():
    features = _features()
    kept = naive_divprune(torch.from_numpy(features), 12).numpy()
    assert greedy_verdict(kept, features, _at(features, kept)) == "near-tie"


def test_a_token_the_greedy_would_not_keep_is_a_mismatch():
    features = _features(1)
    kept = naive_divprune(torch.from_numpy(features), 12).numpy()
    outsider = max(set(range(features.shape[1])) - set(kept[0].tolist()))
    features[0, outsider] = features[0, kept[0, 3]] * 1.01  # a near-duplicate of a kept token: never a greedy pick
    planted = kept.copy()
    planted[0, 5] = outsider
    planted[0].sort()
    assert greedy_verdict(planted, features, _at(features, planted)) == "mismatch"
    assert (
        greedy_verdict(planted[1:], features[1:], _at(features[1:], planted[1:])) == "near-tie"
    )  # the other row is untouched


def test_a_near_tie_moved_by_rounding_takes_another_valid_path():
    features = _features(2)
    kept = naive_divprune(torch.from_numpy(features), 10).numpy()
    first = kept[0][0]
    # a twin of a kept token, one part in 10^4 away: the greedy may keep either; what follows stays valid
    twin = max(set(range(features.shape[1])) - set(kept[0].tolist()))
    features[0, twin] = features[0, first] + 1e-4 * np.abs(features[0, first]).max()
    swapped = naive_divprune(torch.from_numpy(features), 10).numpy()
    alternative = np.sort(np.where(swapped[0] == first, twin, swapped[0]))
    assert alternative.tolist() != swapped[0].tolist()
    assert greedy_verdict(alternative[None], features[:1], _at(features[:1], alternative[None])) == "near-tie"
    assert index_verdict(alternative[None], swapped[:1], None)[0] == "mismatch"  # no score to rank a swap by


@pytest.mark.parametrize("seed", [7, 9])
def test_a_greedy_on_slightly_moved_features_passes_and_on_far_moved_ones_not(seed):
    """0.5 % noise moves a few near-ties and the greedy's later course (another set, each pick still as far
    as fp32's best up to 1 %): passed; 2 % noise: not; nor a random set."""
    features = _features(4, n=96)
    reference = naive_divprune(torch.from_numpy(features), 24).numpy()
    for eps, verdict in ((5e-3, "near-tie"), (2e-2, "mismatch")):
        moved = features + np.float32(eps) * _features(seed, n=96)
        got = naive_divprune(torch.from_numpy(moved), 24).numpy()
        assert not np.array_equal(got, reference)
        assert greedy_verdict(got, features, _at(moved, got)) == verdict
    others = np.sort(np.random.default_rng(6).permutation(96)[:24])[None]
    assert greedy_verdict(others, features[:1], _at(features[:1], others)) == "mismatch"
