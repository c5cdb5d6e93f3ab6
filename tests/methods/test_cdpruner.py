"""CDPruner's graph kernel against the naive determinant greedy: random, planted, edge cases, ONNX; the
any-length form (quota = a length, greedy = an ONNX Loop) against the fixed one and the naive DPP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.methods.test_dart import export_and_run, random_inputs
from tpc.errors import UsageError
from tpc.methods.cdpruner import (
    CDPRUNER_PARAMS,
    cdpruner_select,
    cdpruner_select_any_length,
    conditional_kernel,
    greedy_map,
    greedy_map_rows,
    paper_relevance,
)
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


# (span length, quota): one-token spans, keep = 1, keep = n, odd halves for openvino's split
ANY_LENGTH = [(1, 1), (2, 1), (2, 2), (5, 5), (9, 1), (9, 4), (17, 8), (30, 11)]


def _any_length_case(n: int, batch: int = 2):
    return random_inputs(n, n=n, width=48, batch=batch)


@pytest.mark.parametrize("params", VARIANTS[:3], ids=["paper", "openvino", "openvino-whole"])
def test_any_length_kernel_equals_the_fixed_one_and_the_naive_dpp(params):
    for n, keep in ANY_LENGTH:
        image, text, mask = _any_length_case(n)
        got = cdpruner_select_any_length(image, text, mask, torch.arange(keep), **params)
        assert torch.equal(got, cdpruner_select(image, text, mask, keep, **params)), (n, keep)
        assert torch.equal(got, reference_cdpruner(image, text, mask, keep, **params)), (n, keep)
    # exact duplicates: whether the float64 reference breaks their tie like fp32 depends on BLAS rounding,
    # so the fixed kernel (the same ops) is the oracle; planted exact ties are below
    image, text, mask = _any_length_case(30)
    image[:, [4, 9, 21]] = image[:, 2:3]
    got = cdpruner_select_any_length(image, text, mask, torch.arange(12), **params)
    assert torch.equal(got, cdpruner_select(image, text, mask, 12, **params))
    if params["variant"] == "paper":
        assert all(len({2, 4, 9, 21} & set(row)) <= 1 for row in got.tolist())


@pytest.mark.parametrize("params", VARIANTS[:2], ids=["paper", "openvino"])
def test_any_length_ties_go_to_the_first_index(params):
    image, text, mask = one_hot_span([2.0, 1.0, 2.0, 1.0, 2.0, 0.0])
    no_text = torch.zeros(1, 1, dtype=torch.bool)
    for keep in range(1, 7):
        for prompt in (mask, no_text):
            got = cdpruner_select_any_length(image, text, prompt, torch.arange(keep), **params)
            assert torch.equal(got, reference_cdpruner(image, text, prompt, keep, **params)), keep
    assert cdpruner_select_any_length(image, text, mask, torch.arange(4)).tolist() == [[0, 1, 2, 4]]


def test_greedy_map_rows_runs_one_step_per_row_and_is_prefix_consistent():
    image, text, mask = random_inputs(9, n=24, width=48)
    kernel = conditional_kernel(image, text, mask)
    longest = greedy_map_rows(kernel, torch.arange(24))
    assert torch.equal(longest, greedy_map(kernel, 24))
    for steps in (0, 1, 7, 23):  # the first picks of a longer run are the picks of a shorter one
        assert torch.equal(greedy_map_rows(kernel, torch.arange(steps)), longest[:, :steps])


@pytest.fixture(scope="module", params=VARIANTS[:2], ids=["paper", "openvino"])
def any_length_graph(request, tmp_path_factory):
    """``cdpruner_select_any_length`` exported with its greedy spliced into ONNX Loops (openvino: one per half)."""
    import onnxruntime as ort

    from tpc.compiler.greedy_loop import export_with_greedy_loops

    params = request.param

    class Select(torch.nn.Module):
        def forward(self, image, text, text_mask, keep_rows):
            return cdpruner_select_any_length(image, text, text_mask, keep_rows, **params)

    image, text, mask = _any_length_case(9)
    dims = {name: torch.export.Dim(name, min=1, max=4096) for name in ("batch", "n", "seq", "keep")}
    path = export_with_greedy_loops(
        Select(),
        (image, text, mask, torch.arange(4)),
        tmp_path_factory.mktemp("loop") / "kernel.onnx",
        ["image", "text", "text_mask", "keep_rows"],
        ["kept"],
        {
            "image": {0: dims["batch"], 1: dims["n"]},
            "text": {0: dims["batch"], 1: dims["seq"]},
            "text_mask": {0: dims["batch"], 1: dims["seq"]},
            "keep_rows": {0: dims["keep"]},
        },
        {},
    )
    return params, path, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_the_loop_graph_picks_what_the_naive_dpp_picks_at_every_length(any_length_graph):
    """One graph for every (n, keep): the Loop runs len(keep_rows) steps; one-token spans, ties, keep = 1 and
    keep = n, batches of 1 to 3."""
    params, _, session = any_length_graph
    image, text, mask = one_hot_span([2.0, 1.0, 2.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.5, 1.0])
    planted = (*(torch.nn.functional.pad(t, (0, 38)) for t in (image, text)), mask)  # the graph's width: 48
    no_text = (planted[0], planted[1], torch.zeros(1, 1, dtype=torch.bool))  # every gain ties
    cases = [(*_any_length_case(n, batch=1 + n % 3), keep) for n, keep in ANY_LENGTH]
    cases += [(*planted, keep) for keep in (1, 3, 6, 10)] + [(*no_text, 4)]
    for image, text, mask, keep in cases:
        feeds = {"image": image.numpy(), "text": text.numpy(), "text_mask": mask.numpy(), "keep_rows": np.arange(keep)}
        (got,) = session.run(None, feeds)
        assert got.shape == (image.shape[0], keep)
        assert got.tolist() == reference_cdpruner(image, text, mask, keep, **params).tolist(), (image.shape, keep)
        assert got.tolist() == cdpruner_select_any_length(image, text, mask, torch.arange(keep), **params).tolist()
    feeds = {"image": planted[0].numpy(), "text": planted[1].numpy(), "text_mask": planted[2].numpy()}
    got = session.run(None, {**feeds, "keep_rows": np.arange(6)})[0].tolist()
    assert got == ([[0, 1, 2, 3, 4, 7]] if params["variant"] == "paper" else [[0, 2, 4, 6, 7, 9]])


def test_the_loop_is_counted_by_a_shape_with_constant_shape_state(any_length_graph):
    """TensorRT's rules: trip count = Squeeze(Shape(keep_rows or its slice)) (a kCOUNT limit), no condition, no
    scan output, each loop-carried value declared with the shape it is returned with; no placeholder is left."""
    import onnx

    from tpc.compiler.trt_check import check_graph

    params, path, _ = any_length_graph
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    producers = {out: node for node in model.graph.node for out in node.output}
    loops = [node for node in model.graph.node if node.op_type == "Loop"]
    assert len(loops) == (1 if params["variant"] == "paper" else 2)  # openvino: one greedy per half
    for loop in loops:
        squeeze = producers[loop.input[0]]
        assert squeeze.op_type == "Squeeze" and producers[squeeze.input[0]].op_type == "Shape"
        assert loop.input[1] == ""
        body = loop.attribute[0].g
        assert len(body.output) == len(loop.input) - 1  # the condition and the three states: no scan output
        for given, returned in zip(body.input[2:], body.output[1:], strict=True):
            assert given.type == returned.type
    if params["variant"] == "paper":  # Squeeze(Shape(keep_rows))
        assert producers[producers[loops[0].input[0]].input[0]].input[0] == "keep_rows"
    assert {o.domain for o in model.opset_import} == {""}
    report = check_graph(model, "kernel")
    assert report.blockers == [] and report.ops["Loop"] == len(loops)
    assert report.ops["ScatterElements"] == 3 * len(loops)  # the body's nodes are checked too
