"""Every built-in parameter's documented range is enforced, before any model is loaded."""

from __future__ import annotations

import pytest

from tpc.errors import UsageError
from tpc.methods import METHODS, check_method_args
from tpc.methods.params import PARAMS


def test_the_cli_checks_the_same_parameters_the_methods_use():
    assert set(PARAMS) == set(METHODS.names())
    for name in METHODS.names():
        assert METHODS.get(name).params is PARAMS[name]


@pytest.mark.parametrize(
    "name,pairs,fragment",
    [
        ("cls-mass", {"mass": "2"}, "mass=2: must be in (0, 1]"),
        ("cls-mass", {"mass": "0"}, "must be in (0, 1]"),
        ("cls-mass", {"mass": "nan"}, "finite"),
        ("random", {"seed": "-1"}, "must be in [0, inf)"),
        ("visionzip", {"dominant": "-3"}, "must be in [0, inf)"),
        ("vtc-cls", {"start_layer": "-1"}, "must be in [0, inf)"),
        ("fastervlm", {"x": "1"}, "has no parameter 'x'"),
    ],
)
def test_out_of_range_values_are_refused(name, pairs, fragment):
    with pytest.raises(UsageError) as info:
        check_method_args(name, pairs)
    assert fragment in str(info.value)


def test_in_range_values_parse():
    assert check_method_args("cls-mass", {"mass": "1"}) == {"mass": 1.0}
    assert check_method_args("cls-mass", {"mass": "0.5"}) == {"mass": 0.5}
    assert check_method_args("mypkg.scores:edge_energy", {}) is None  # plugins are checked when loaded
