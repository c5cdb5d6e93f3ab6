"""``expose_received_attention``: the attention each token receives at the feature layer, from its own q/k.

The oracle is Hugging Face's own eager SigLIP attention matrix (``output_attentions=True``): its
column mean (heads, then query rows) must equal what the pass computes from the fused layer's
operands, without changing the graph's outputs.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.passes.helpers import pixels, traced
from tpc.methods import METHODS
from tpc.methods.reference import reference_received
from tpc.models.families import make_adapter
from tpc.models.presets import PRESETS, build_preset
from tpc.passes import PassContext
from tpc.passes.expose_cls_attention import expose_cls_attention
from tpc.passes.expose_received_attention import expose_received_attention
from tpc.passes.graph_lookup import find_value, output_values, set_output_values


@pytest.fixture(scope="module")
def onevision():
    return make_adapter(*build_preset(PRESETS["llava-onevision-tiny"]))


def _context(adapter, method: str, keep: int = 81) -> PassContext:
    return PassContext(layout=adapter.vision, method=METHODS.get(method), keep=keep)


def _read(gm, names, x):
    """The graph's first output and the values tagged ``names``, for input ``x``."""
    nodes = [find_value(gm, name) for name in names]
    assert all(n is not None for n in nodes)
    set_output_values(gm, output_values(gm)[:1] + nodes)
    gm.recompile()
    with torch.no_grad():
        return gm(x)


def test_received_attention_equals_the_column_mean_of_the_eager_attention_matrix(onevision):
    gm = traced(onevision)
    x = pixels(2, seed=3, size=384)
    with torch.no_grad():
        before = gm(x)[0]
    result = expose_received_attention(gm, _context(onevision, "received"))
    assert result.modified and result.stats["layer"] == onevision.vision.feature_layer == 2
    features, received = _read(result.graph_module, ["received_attention"], x)
    assert torch.equal(features, before)  # the graph's own outputs are untouched
    # Hugging Face's eager attention weights of the feature layer: softmax(Q K^T * scale) [B, H, T, T]
    tower = copy.deepcopy(onevision.model.model.vision_tower)
    tower.config._attn_implementation = "eager"
    with torch.no_grad():
        weights = tower(x, output_attentions=True).attentions[onevision.vision.feature_layer]
    assert weights.shape == (2, 4, 729, 729)
    expected = weights.mean(dim=1).mean(dim=1)  # heads, then query rows: the column mean
    assert received.shape == (2, 729)
    torch.testing.assert_close(received, expected, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(received.sum(-1), torch.ones(2))  # a mean of probability rows
    torch.testing.assert_close(received, reference_received(onevision, onevision.reference_vision(x)))


def test_one_attention_matrix_is_added_and_the_pass_is_idempotent(onevision):
    gm = traced(onevision)
    ctx = _context(onevision, "received")
    before = sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.matmul)
    assert expose_received_attention(gm, ctx).modified
    after = sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.matmul)
    assert after - before == 1  # Q K^T of the one layer
    assert not expose_received_attention(gm, ctx).modified
    for method in ("divprune", "uniform", "fastervlm"):  # methods that do not read it
        assert not expose_received_attention(traced(onevision), _context(onevision, method)).modified


def test_attention_score_is_received_attention_without_cls(onevision):
    gm = traced(onevision)
    x = pixels(1, seed=4, size=384)
    result = expose_received_attention(gm, _context(onevision, "visionzip"))
    assert result.stats["attention_score"] == "received_attention"
    _, score = _read(result.graph_module, ["attention_score"], x)
    torch.testing.assert_close(score, reference_received(onevision, onevision.reference_vision(x)))


def test_with_cls_the_cls_column_is_dropped_and_the_score_is_the_cls_row(tiny_adapter):
    x = pixels(2, seed=5)
    gm = expose_received_attention(traced(tiny_adapter), _context(tiny_adapter, "received", 64)).graph_module
    _, received = _read(gm, ["received_attention"], x)
    assert received.shape == (2, tiny_adapter.vision.num_patches)  # 576: the [CLS] key column dropped
    torch.testing.assert_close(received, reference_received(tiny_adapter, tiny_adapter.reference_vision(x)))
    # on an encoder with [CLS], VisionZip's attention score is FasterVLM's [CLS] row
    result = expose_received_attention(traced(tiny_adapter), _context(tiny_adapter, "visionzip", 64))
    assert result.stats["attention_score"] == "cls_attention"
    _, score = _read(result.graph_module, ["attention_score"], x)
    cls_gm = expose_cls_attention(traced(tiny_adapter), _context(tiny_adapter, "fastervlm", 64)).graph_module
    _, cls_row = _read(cls_gm, ["cls_attention"], x)
    torch.testing.assert_close(score, cls_row, rtol=0, atol=0)
