import dataclasses

import torch

from tests.passes.helpers import context, pixels, traced
from tpc.methods import METHODS
from tpc.passes.expose_cls_attention import expose_cls_attention
from tpc.passes.graph_lookup import find_value, output_values, set_output_values


def test_exposes_the_cls_row_without_changing_outputs(tiny_adapter):
    gm = traced(tiny_adapter)
    x = pixels()
    with torch.no_grad():
        before = gm(x)[0]
    result = expose_cls_attention(gm, context(tiny_adapter))
    assert result.modified and result.stats["layer"] == tiny_adapter.vision.feature_layer
    gm = result.graph_module
    row = find_value(gm, "cls_attention")
    assert row is not None
    set_output_values(gm, output_values(gm) + [row])  # read the exposed value out
    gm.recompile()
    with torch.no_grad():
        features, cls_row = gm(x)
    assert torch.equal(features, before)
    ref = tiny_adapter.reference_vision(x)
    expected = torch.softmax(ref["cls_q"] @ ref["keys"].transpose(-1, -2) * ref["scale"], -1)[:, :, 0, 1:].mean(1)
    assert cls_row.shape == (2, tiny_adapter.vision.num_patches)
    torch.testing.assert_close(cls_row, expected, rtol=1e-5, atol=1e-7)


def test_no_full_attention_matrix_is_materialised(tiny_adapter):
    gm = expose_cls_attention(traced(tiny_adapter), context(tiny_adapter)).graph_module
    row = find_value(gm, "cls_attention")
    # walk back from the row to the SDPA operands: every matmul has a single query row
    matmuls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.matmul]
    assert len(matmuls) == 1
    query_slice = matmuls[0].args[0]
    if query_slice.op == "call_method" and query_slice.target == "float":  # the fp32 upcast of the score
        query_slice = query_slice.args[0]
    assert query_slice.args[1][2] == slice(0, 1)
    assert row is not None


def test_is_idempotent_and_skips_methods_that_do_not_need_it(tiny_adapter):
    gm = traced(tiny_adapter)
    assert expose_cls_attention(gm, context(tiny_adapter)).modified
    assert not expose_cls_attention(gm, context(tiny_adapter)).modified
    no_cls = dataclasses.replace(METHODS.get("fastervlm"), needs=())
    ctx = dataclasses.replace(context(tiny_adapter), method=no_cls)
    assert not expose_cls_attention(traced(tiny_adapter), ctx).modified
