"""Expose [CLS] attention rows of ViT layers without an attention matrix.

The layers run fused SDPA, which never materialises attention weights. For each layer
the method reads, this pass takes the q and k operands of that layer's SDPA node and
adds the one [CLS] query row, ``softmax(q_cls . K^T * scale)`` averaged over heads, with
the [CLS] key dropped: O(T*d) per head. Tagged values: ``cls_attention`` (the feature
layer's row, [B,N]) and ``cls_attention_layers`` (rows of every requested layer, [B,L,N]).

Before::

    q, k, v = ...; attn = sdpa(q, k, v, scale=s)
After::

    q, k, v = ...; attn = sdpa(q, k, v, scale=s)
    cls_attention = mean_h(softmax(q[:, :, 0:1] @ k^T * s))[:, 1:]     # [B, N]
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule

from tpc.methods.attention import cls_attention_row
from tpc.passes.graph_lookup import TPC_VALUE, call_in_graph, find_attention, find_value
from tpc.passes.infra import PassContext, PassResult

VALUE_NAME = "cls_attention"
LAYERS_VALUE = "cls_attention_layers"


def _row(gm: GraphModule, ctx: PassContext, layer: int):
    sdpa = find_attention(gm, ctx.layout.layers_path, layer)
    scale = sdpa.kwargs.get("scale")
    if scale is None:
        scale = ctx.layout.head_dim**-0.5
    # inserting_before(next) keeps the recorded ops in order (inserting_after would reverse them)
    with gm.graph.inserting_before(sdpa.next):
        row = call_in_graph(gm, cls_attention_row, sdpa.args[0], sdpa.args[1], scale=float(scale))
    return row, sdpa, float(scale)


def expose_cls_attention(gm: GraphModule, ctx: PassContext) -> PassResult:
    needs = set(ctx.method.needs)
    wanted = [name for name in (VALUE_NAME, LAYERS_VALUE) if name in needs and find_value(gm, name) is None]
    if not wanted:
        return PassResult(gm, False, {})
    stats = {}
    if VALUE_NAME in wanted:
        row, sdpa, scale = _row(gm, ctx, ctx.layout.feature_layer)
        row.meta[TPC_VALUE] = VALUE_NAME
        stats.update(layer=ctx.layout.feature_layer, heads=ctx.layout.num_heads, scale=scale, attention_node=sdpa.name)
    if LAYERS_VALUE in wanted:
        layers = ctx.method.layers(ctx.layout, ctx.params)
        rows = [_row(gm, ctx, layer)[0] for layer in layers]
        last = max(rows, key=lambda n: list(gm.graph.nodes).index(n))
        with gm.graph.inserting_after(last):
            stacked = gm.graph.call_function(torch.stack, (rows,), {"dim": 1})
        stacked.meta[TPC_VALUE] = LAYERS_VALUE
        stats["layers"] = layers
    return PassResult(gm, True, stats)
