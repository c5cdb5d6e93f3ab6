"""CDPruner's graph kernel against the naive determinant greedy: random, planted, edge cases, ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.methods.test_dart import export_and_run, random_inputs
from tpc.errors import UsageError
from tpc.methods.cdpruner import CDPRUNER_PARAMS, cdpruner_select, conditional_kernel, greedy_map, paper_relevance
from tpc.methods.llm_input_reference import naive_greedy_dpp, reference_cdpruner
from tpc.methods.params import parse_params

VARIANTS = [
    {"variant": "paper"},
    {"variant": "openvino"},
    {"variant": "openvino", "split": 0, "relevance_weight": 0.8},
    {"variant": "openvino", "relevance_weight": 1.0},
    {"variant": "openvino", "split": 0, "relevance_weight": 0.25},
]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("params", VARIANTS, ids=lambda p: "-".join(map(str, p.values())))
def test_kernel_equals_the_naive_dpp_on_random_inputs(seed, params):
    image, text, mask = random_inputs(seed, width=48)
    for keep in (1, 7, 16, 25):
        got = cdpruner_select(image, text, mask, keep, **params)
        assert got.dtype == torch.int64 and got.shape == (2, keep)
        assert torch.equal(got, reference_cdpruner(image, text, mask, keep, **params))
        assert (got[:, 1:] > got[:, :-1]).all()


@pytest.mark.parametrize("seed", range(3))
def test_greedy_picks_in_the_order_of_the_determinant_gains(seed):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(1, 30, 40, generator=g, dtype=torch.float64)
    weight = torch.rand(1, 30, 1, generator=g, dtype=torch.float64) + 0.1
    kernel = (weight * features) @ (weight * features).transpose(1, 2) / 40
    order = greedy_map(kernel.float(), 20)[0].tolist()
    assert order == naive_greedy_dpp(kernel[0].numpy(), 20)


def test_the_prompt_changes_the_selection_and_samples_are_independent():
    image, text, mask = random_inputs(0, width=48)
    image[1] = image[0]
    got = cdpruner_select(image, text, mask, 12)
    assert not torch.equal(got[0], got[1])
    assert torch.equal(got[1:], cdpruner_select(image[1:], text[1:], mask[1:], 12))


def one_hot_span(relevance: list[float]):
    """Orthonormal image rows (equal diversity) and one real text row whose cosine with row i is
    proportional to ``relevance[i]``."""
    n = len(relevance)
    image = torch.eye(n).unsqueeze(0)
    text = torch.tensor(relevance).view(1, 1, n)
    return image, text, torch.ones(1, 1, dtype=torch.bool)


def test_with_equal_diversity_the_most_relevant_tokens_win_and_relevance_zero_comes_last():
    image, text, mask = one_hot_span([5.0, 1.0, 4.0, 2.0, 3.0, 0.5, 6.0, 1.5])
    assert paper_relevance(image, text, mask)[0, 5].item() == 0.0  # the least relevant row: r = 0
    assert cdpruner_select(image, text, mask, 3).tolist() == [[0, 2, 6]]
    assert cdpruner_select(image, text, mask, 7).tolist() == [[0, 1, 2, 3, 4, 6, 7]]
    assert greedy_map(conditional_kernel(image, text, mask), 8).tolist() == [[6, 0, 2, 4, 3, 7, 1, 5]]
    for keep in range(1, 9):
        assert torch.equal(cdpruner_select(image, text, mask, keep), reference_cdpruner(image, text, mask, keep))


def test_ties_go_to_the_first_index():
    image, text, mask = one_hot_span([2.0, 1.0, 2.0, 1.0, 2.0, 0.0])
    assert greedy_map(conditional_kernel(image, text, mask), 6).tolist() == [[0, 2, 4, 1, 3, 5]]
    assert cdpruner_select(image, text, mask, 2).tolist() == [[0, 2]]
    assert cdpruner_select(image, text, mask, 4).tolist() == [[0, 1, 2, 4]]
    assert reference_cdpruner(image, text, mask, 4).tolist() == [[0, 1, 2, 4]]
    no_text = torch.zeros(1, 1, dtype=torch.bool)  # every relevance equal: all gains tie
    assert cdpruner_select(image, text, no_text, 4).tolist() == [[0, 1, 2, 3]]
    assert cdpruner_select(image, text, no_text, 4, variant="openvino").tolist() == [[0, 1, 3, 4]]  # halves
    assert reference_cdpruner(image, text, no_text, 4, variant="openvino").tolist() == [[0, 1, 3, 4]]


def test_an_exact_duplicate_is_kept_at_most_once():
    image, text, mask = random_inputs(3, n=30, width=48)
    copies = [2, 5, 11, 17, 23, 29]
    image[:, copies] = image[:, 11:12]
    got = cdpruner_select(image, text, mask, 16)
    assert torch.equal(got, reference_cdpruner(image, text, mask, 16))
    for row in got.tolist():
        assert len(set(row) & set(copies)) <= 1


def test_degenerate_relevance_leaves_the_similarity_kernel():
    """No real text row (or one that every token matches equally): r = 1, K = S, pure diversity."""
    image, text, _ = random_inputs(4, width=48)
    no_text = torch.zeros(2, 10, dtype=torch.bool)
    assert torch.equal(paper_relevance(image, text, no_text), torch.ones(2, 40))
    unit = torch.nn.functional.normalize(image, dim=-1)
    similarity = unit @ unit.transpose(1, 2)
    kernel = conditional_kernel(image, text, no_text)
    torch.testing.assert_close(kernel, similarity)
    assert torch.equal(torch.diagonal(kernel, dim1=1, dim2=2), torch.ones(2, 40))
    for keep in (1, 9, 30):
        assert torch.equal(cdpruner_select(image, text, no_text, keep), reference_cdpruner(image, text, no_text, keep))


def test_keep_n_keeps_everything_and_keep_1_keeps_the_most_relevant_token():
    image, text, mask = random_inputs(5, width=48)
    for params in VARIANTS:
        assert cdpruner_select(image, text, mask, 40, **params).tolist() == [list(range(40))] * 2
    top = paper_relevance(image, text, mask).argmax(dim=-1, keepdim=True)
    assert torch.equal(cdpruner_select(image, text, mask, 1), top)


def test_openvino_halves_keep_half_of_the_budget_each():
    image, text, mask = random_inputs(6, n=41, width=48)
    for keep, first in ((9, 4), (10, 5), (1, 0)):
        got = cdpruner_select(image, text, mask, keep, variant="openvino")
        assert ((got < 20).sum(dim=1) == first).all()
        assert torch.equal(got, reference_cdpruner(image, text, mask, keep, variant="openvino"))
    whole = cdpruner_select(image, text, mask, 9, variant="openvino", split=0)
    assert torch.equal(whole, reference_cdpruner(image, text, mask, 9, variant="openvino", split=0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("params", VARIANTS[:2], ids=["paper", "openvino"])
def test_half_precision_inputs_select_like_fp32(dtype, params):
    """Values exact in fp16/bf16 but large: squared norms overflow fp16, so fp16 math would fail."""
    g = torch.Generator().manual_seed(8)
    image = torch.randint(-120, 121, (2, 40, 64), generator=g).float()
    text = torch.randint(-120, 121, (2, 10, 64), generator=g).float()
    mask = torch.rand(2, 10, generator=g) > 0.3
    expected = cdpruner_select(image, text, mask, 12, **params)
    assert torch.equal(cdpruner_select(image.to(dtype), text.to(dtype), mask, 12, **params), expected)
    assert torch.equal(expected, reference_cdpruner(image, text, mask, 12, **params))


@pytest.mark.parametrize("params", VARIANTS[:2], ids=["paper", "openvino"])
def test_onnx_export_runs_like_the_eager_kernel(tmp_path, params):
    planted = one_hot_span([2.0, 1.0, 2.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.5, 1.0])
    cases = [
        random_inputs(0, n=10, width=10),
        random_inputs(1, n=10, tokens=3, width=10, batch=3),
        random_inputs(2, n=10, tokens=25, width=10, batch=1),
        (planted[0].repeat(2, 1, 1), planted[1].repeat(2, 1, 1), torch.tensor([[True], [False]])),
    ]
    cases[0][0][:, 7] = cases[0][0][:, 3]  # an exact duplicate
    outputs = export_and_run(tmp_path, cdpruner_select, 6, cases, **params)
    for (image, text, mask), got in zip(cases, outputs, strict=True):
        assert got.tolist() == cdpruner_select(image, text, mask, 6, **params).tolist()
        assert got.tolist() == reference_cdpruner(image, text, mask, 6, **params).tolist()
    assert outputs[-1].tolist()[0] == ([0, 1, 2, 3, 4, 7] if params["variant"] == "paper" else [0, 2, 4, 6, 7, 9])


@pytest.mark.parametrize(
    "pairs,fragment",
    [
        ({"variant": "fast"}, "variant='fast': expected one of paper, openvino"),
        ({"relevance_weight": "1.5"}, "must be in [0, 1]"),
        ({"relevance_weight": "nan"}, "finite"),
        ({"split": "2"}, "must be in [0, 1]"),
    ],
)
def test_bad_parameter_values_are_one_line_usage_errors(pairs, fragment):
    with pytest.raises(UsageError) as info:
        parse_params("cdpruner", CDPRUNER_PARAMS, pairs)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    defaults = {"variant": "paper", "relevance_weight": 0.5, "split": 1}
    assert parse_params("cdpruner", CDPRUNER_PARAMS, {}) == defaults
    assert parse_params("cdpruner", CDPRUNER_PARAMS, {"variant": "openvino"})["variant"] == "openvino"


@pytest.mark.parametrize(
    "keep,params",
    [(0, {}), (41, {}), (5, {"variant": "fast"}), (5, {"relevance_weight": -0.1}), (5, {"split": 3})],
)
def test_the_kernel_refuses_values_it_cannot_run_with(keep, params):
    image, text, mask = random_inputs(0)
    with pytest.raises(UsageError) as info:
        cdpruner_select(image, text, mask, keep, **params)
    assert "\n" not in str(info.value)


def test_every_budget_of_a_small_span_matches_the_reference():
    image, text, mask = random_inputs(7, n=6, width=8)
    for keep in range(1, 7):
        expected = reference_cdpruner(image, text, mask, keep)
        assert np.array_equal(cdpruner_select(image, text, mask, keep).numpy(), expected.numpy())
