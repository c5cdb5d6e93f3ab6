import numpy as np
import pytest

from tpc.errors import UsageError
from tpc.runtimes.sampling import Sampler


def test_greedy_is_argmax():
    logits = np.array([[0.1, 3.0, 2.0], [5.0, 1.0, 4.9]], np.float32)
    assert Sampler()(logits).tolist() == [1, 0]


def test_sampling_is_seeded_and_respects_top_p():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 200, np.float64))
    a = Sampler(temperature=1.0, top_p=0.7, seed=3)(logits)
    b = Sampler(temperature=1.0, top_p=0.7, seed=3)(logits)
    assert np.array_equal(a, b)
    assert set(a.tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.7: tokens 2 and 3 are cut


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5)])
def test_bad_sampling_settings(kwargs):
    with pytest.raises(UsageError):
        Sampler(**kwargs)
