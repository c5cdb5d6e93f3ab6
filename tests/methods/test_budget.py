import pytest

from tpc.errors import UsageError
from tpc.methods.budget import keep_count


@pytest.mark.parametrize(
    "ratio,expected",
    [
        (0.89, 64),
        (0.90, 58),
        (0.95, 29),
        (0.75, 144),
        (0.778, 128),
        (0.889, 64),
        (0.944, 33),
        (0.0, 576),
        (0.6667, 192),
    ],
)
def test_keep_from_ratio_matches_methods_md(ratio, expected):
    assert keep_count(576, ratio) == expected


def test_keep_overrides_ratio():
    assert keep_count(576, 0.89, keep=100) == 100
    assert keep_count(576, None, keep=576) == 576


@pytest.mark.parametrize("ratio", [1.0, -0.01, 1.5, float("nan")])
def test_ratio_outside_range_is_rejected(ratio):
    with pytest.raises(UsageError, match="outside"):
        keep_count(576, ratio)


@pytest.mark.parametrize("keep", [0, -3, 577])
def test_keep_outside_range_is_rejected(keep):
    with pytest.raises(UsageError, match="outside"):
        keep_count(576, None, keep=keep)


def test_tiny_ratio_keeps_at_least_one():
    assert keep_count(4, 0.999) == 1
