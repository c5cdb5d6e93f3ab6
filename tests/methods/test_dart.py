"""DART's graph kernel against its naive reference: random, planted, edge cases, dtypes, ONNX."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tpc.errors import UsageError
from tpc.methods.dart import DART_PARAMS, dart_select, pivot_counts
from tpc.methods.llm_input_reference import reference_dart
from tpc.methods.params import parse_params


def random_inputs(seed: int, n: int = 40, tokens: int = 10, width: int = 32, batch: int = 2):
    """Batch of spans with different prompts: sample 0 has ~60 % real rows, the others the first and last."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, n, width, generator=g)
    text = torch.randn(batch, tokens, width, generator=g)
    mask = torch.rand(batch, tokens, generator=g) > 0.4
    mask[1:] = False
    mask[1:, [0, tokens - 1]] = True
    return image, text, mask


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("keep,image_pivots,text_pivots", [(12, 4, 4), (5, 4, 4), (3, 4, 4), (20, 1, 0), (17, 2, 6)])
def test_kernel_equals_the_reference_on_random_inputs(seed, keep, image_pivots, text_pivots):
    image, text, mask = random_inputs(seed)
    got = dart_select(image, text, mask, keep, image_pivots, text_pivots)
    assert got.dtype == torch.int64 and got.shape == (2, keep)
    assert torch.equal(got, reference_dart(image, text, mask, keep, image_pivots, text_pivots))
    assert (got[:, 1:] > got[:, :-1]).all()  # ascending, no repeats


def test_the_two_prompts_of_a_batch_select_differently():
    image, text, mask = random_inputs(0)
    image[1] = image[0]
    got = dart_select(image, text, mask, 12)
    assert not torch.equal(got[0], got[1])  # same span, different text pivots
    assert torch.equal(got[1:], dart_select(image[1:], text[1:], mask[1:], 12))  # rows are independent


def test_duplicates_of_the_top_pivot_are_dropped_first():
    """Ten exact copies of the largest-L1 token: the first copy is the pivot, the others are
    the most similar tokens to it and to the prompt, so none of them is kept."""
    image, text, mask = random_inputs(1, n=48)
    copies = [5, 9, 13, 20, 21, 30, 31, 40, 44, 47]
    copy = 3.0 * torch.randn(32, generator=torch.Generator().manual_seed(11))
    image[:, copies] = copy
    text[:] = copy + 0.3 * text  # every text pivot points along the copies
    for keep in (8, 24, 48 - len(copies) + 1):
        got = dart_select(image, text, mask, keep, image_pivots=1)
        assert torch.equal(got, reference_dart(image, text, mask, keep, image_pivots=1))
        for row in got.tolist():
            assert [i for i in row if i in copies] == [5]


def test_tokens_that_duplicate_every_pivot_are_never_kept():
    image, text, mask = random_inputs(2, n=48)
    direction = torch.randn(32, generator=torch.Generator().manual_seed(7))
    scales = torch.tensor([9.0, 8.0, 7.0, 6.0]).view(4, 1)
    image[:, :4] = scales * direction + 0.05 * image[:, :4]  # the four image pivots
    copies = list(range(10, 30))
    image[:, copies] = direction  # exact duplicates of each other, cosine ~1 to every pivot
    text[:] = direction + 0.05 * text
    got = dart_select(image, text, mask, 24)
    assert torch.equal(got, reference_dart(image, text, mask, 24))
    assert not set(got.flatten().tolist()) & set(copies)
    assert set(range(4)) <= set(got[0].tolist())


def test_ties_go_to_the_lower_index():
    # one-hot rows: every L1 is 1 (pivot ties) and every cosine between rows is 0 (candidate ties)
    image = torch.eye(10).repeat(2, 1, 1)
    text = torch.zeros(2, 3, 10)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    assert dart_select(image, text, mask, 6, image_pivots=2).tolist() == [list(range(6))] * 2
    # row 3 still has L1 1 but leans toward both pivots (rows 0 and 1): the pivots take 4 + 3
    # of the tied rows, lowest index first, and row 3 is the one left over
    image[:, 3] = torch.tensor([0.25, 0.25, 0, 0.5, 0, 0, 0, 0, 0, 0])
    got = dart_select(image, text, mask, 9, image_pivots=2)
    assert got.tolist() == [[0, 1, 2, 4, 5, 6, 7, 8, 9]] * 2
    assert torch.equal(got, reference_dart(image, text, mask, 9, image_pivots=2))
    # a text pivot along row 5 adds a third pivot (counts 3, 2, 2): row 3 is taken by it, row 9 is left
    text[:, 0, 5] = 1.0
    mask[:, 0] = True
    got = dart_select(image, text, mask, 9, image_pivots=2)
    assert got.tolist() == [list(range(9))] * 2
    assert torch.equal(got, reference_dart(image, text, mask, 9, image_pivots=2))


def test_equal_cosines_keep_the_lower_of_two_identical_candidates():
    image, text, mask = random_inputs(3, n=20)
    image[:, 11] = image[:, 6]  # identical candidates: same L1, same cosine to every pivot
    for keep in range(1, 21):
        got = dart_select(image, text, mask, keep)
        assert torch.equal(got, reference_dart(image, text, mask, keep))
        for row in got.tolist():
            assert 11 not in row or 6 in row


def test_keep_n_keeps_everything_and_keep_1_keeps_the_largest_l1_token():
    image, text, mask = random_inputs(4)
    assert dart_select(image, text, mask, 40).tolist() == [list(range(40))] * 2
    top = image.abs().sum(-1).argmax(-1, keepdim=True)
    assert torch.equal(dart_select(image, text, mask, 1), top)
    assert torch.equal(reference_dart(image, text, mask, 1), top)


@pytest.mark.parametrize("real_rows", [0, 1, 2, 3])
def test_fewer_text_rows_than_pivots_use_only_the_real_ones(real_rows):
    image, text, mask = random_inputs(5, tokens=3)
    mask[:] = False
    mask[:, :real_rows] = True
    text[:, real_rows:] *= 100.0  # masked rows have the largest L1: they must still not be pivots
    got = dart_select(image, text, mask, 15)
    assert torch.equal(got, reference_dart(image, text, mask, 15))
    short = text[:, :real_rows] if real_rows else torch.zeros(2, 1, 32)
    short_mask = mask[:, :real_rows] if real_rows else torch.zeros(2, 1, dtype=torch.bool)
    assert torch.equal(got, dart_select(image, short, short_mask, 15))  # masking == absence


def test_text_mask_may_be_integers():
    image, text, mask = random_inputs(6)
    assert torch.equal(dart_select(image, text, mask.to(torch.int64), 9), dart_select(image, text, mask, 9))


def test_per_pivot_counts_follow_the_valid_pivots_of_each_sample():
    valid = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert pivot_counts(valid, 10).tolist() == [[3, 3, 2, 2, 0], [5, 5, 0, 0, 0], [2, 2, 2, 2, 2]]
    assert pivot_counts(valid, 0).tolist() == [[0] * 5] * 3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_select_like_fp32(dtype):
    """Values exact in fp16/bf16 but large: squared norms overflow fp16, so fp16 math would fail."""
    g = torch.Generator().manual_seed(8)
    image = torch.randint(-120, 121, (2, 40, 64), generator=g).float()
    text = torch.randint(-120, 121, (2, 10, 64), generator=g).float()
    mask = torch.rand(2, 10, generator=g) > 0.3
    expected = dart_select(image, text, mask, 12)
    assert torch.equal(dart_select(image.to(dtype), text.to(dtype), mask, 12), expected)
    assert torch.equal(expected, reference_dart(image, text, mask, 12))


class _Kernel(torch.nn.Module):
    def __init__(self, select, keep: int, **params):
        super().__init__()
        self.select, self.keep, self.params = select, keep, params

    def forward(self, image, text, text_mask):
        return self.select(image, text, text_mask, self.keep, **self.params)


def export_and_run(tmp_path, select, keep: int, cases: list[tuple], **params) -> list[np.ndarray]:
    """Export ``select`` (batch and prompt length dynamic) and run it on ``cases`` in ONNX Runtime."""
    image, text, mask = cases[0]
    path = tmp_path / "kernel.onnx"
    batch, seq = torch.export.Dim("batch", min=1, max=8), torch.export.Dim("seq", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Kernel(select, keep, **params),
            (image, text, mask),
            str(path),
            dynamo=True,
            input_names=["image", "text", "text_mask"],
            output_names=["kept"],
            dynamic_shapes={"image": {0: batch}, "text": {0: batch, 1: seq}, "text_mask": {0: batch, 1: seq}},
        )
    session = ort.InferenceSession(str(path))
    feeds = [{"image": i.numpy(), "text": t.numpy(), "text_mask": m.numpy()} for i, t, m in cases]
    return [session.run(None, feed)[0] for feed in feeds]


def test_onnx_export_runs_like_the_eager_kernel(tmp_path):
    planted = (torch.eye(10).repeat(3, 1, 1) * 2.0, torch.zeros(3, 4, 10), torch.zeros(3, 4, dtype=torch.bool))
    planted[1][1, 0, 3] = 1.0
    planted[2][1, 0] = True
    cases = [
        random_inputs(0, n=10, width=10),
        random_inputs(1, n=10, tokens=3, width=10, batch=3),
        random_inputs(2, n=10, tokens=25, width=10, batch=1),
        planted,
    ]
    outputs = export_and_run(tmp_path, dart_select, 7, cases, image_pivots=2)
    for (image, text, mask), got in zip(cases, outputs, strict=True):
        assert got.tolist() == dart_select(image, text, mask, 7, image_pivots=2).tolist()
        assert got.tolist() == reference_dart(image, text, mask, 7, image_pivots=2).tolist()


@pytest.mark.parametrize(
    "pairs,fragment",
    [
        ({"image_pivots": "0"}, "[1, inf)"),
        ({"image_pivots": "-2"}, "[1, inf)"),
        ({"text_pivots": "-1"}, "[0, inf)"),
        ({"image_pivots": "x"}, "int"),
    ],
)
def test_bad_parameter_values_are_one_line_usage_errors(pairs, fragment):
    with pytest.raises(UsageError) as info:
        parse_params("dart", DART_PARAMS, pairs)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert parse_params("dart", DART_PARAMS, {}) == {"image_pivots": 4, "text_pivots": 4}


@pytest.mark.parametrize("keep,image_pivots,text_pivots", [(0, 4, 4), (41, 4, 4), (5, 0, 4), (5, -1, 4), (5, 4, -1)])
def test_the_kernel_refuses_values_it_cannot_run_with(keep, image_pivots, text_pivots):
    image, text, mask = random_inputs(0)
    with pytest.raises(UsageError) as info:
        dart_select(image, text, mask, keep, image_pivots, text_pivots)
    assert "\n" not in str(info.value)
