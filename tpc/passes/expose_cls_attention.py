"""Expose the feature layer's [CLS] attention row without an attention matrix.

The layer runs fused SDPA, which never materialises attention weights. This pass
reads the q and k operands of that SDPA node and adds the one [CLS] query row,
``softmax(q_cls . K^T * scale)`` averaged over heads, with the [CLS] key dropped:
O(T*d) per head. The row is tagged ``cls_attention`` for the selection pass.

Before::

    q, k, v = ...; attn = sdpa(q, k, v, scale=s)
After::

    q, k, v = ...; attn = sdpa(q, k, v, scale=s)
    cls_attention = mean_h(softmax(q[:, :, 0:1] @ k^T * s))[:, 1:]     # [B, N]
"""

from __future__ import annotations

from torch.fx import GraphModule

from tpc.methods.attention import cls_attention_row
from tpc.passes.graph_lookup import TPC_VALUE, call_in_graph, find_attention, find_value
from tpc.passes.infra import PassContext, PassResult

VALUE_NAME = "cls_attention"


def expose_cls_attention(gm: GraphModule, ctx: PassContext) -> PassResult:
    layout = ctx.layout
    if VALUE_NAME not in ctx.method.needs or find_value(gm, VALUE_NAME) is not None:
        return PassResult(gm, False, {})
    sdpa = find_attention(gm, layout.layers_path, layout.feature_layer)
    query, key = sdpa.args[0], sdpa.args[1]
    scale = sdpa.kwargs.get("scale")
    if scale is None:
        scale = layout.head_dim ** -0.5
    # inserting_before(next) keeps the recorded ops in order (inserting_after would reverse them)
    with gm.graph.inserting_before(sdpa.next):
        row = call_in_graph(gm, cls_attention_row, query, key, scale=float(scale))
    row.meta[TPC_VALUE] = VALUE_NAME
    return PassResult(
        gm, True, {"layer": layout.feature_layer, "heads": layout.num_heads, "scale": float(scale),
                   "attention_node": sdpa.name},
    )
