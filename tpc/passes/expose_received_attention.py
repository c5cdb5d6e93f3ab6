"""Expose the attention each token RECEIVES at the feature layer (encoders without [CLS]).

SigLIP (LLaVA-OneVision) has no [CLS] query row to score patches with; METHODS.md's
replacement is the column mean of the feature layer's attention matrix: ``softmax(Q K^T *
scale)`` averaged over heads, then over every query row. The layer runs fused SDPA, so
this pass recomputes that one matrix from the q and k operands of the layer's own SDPA
node (one extra T x T attention, not one per layer). Tagged values:

* ``received_attention`` [B,N]: the column mean (the [CLS] key column dropped where the
  encoder has one);
* ``attention_score`` [B,N]: the score a method defined on "the encoder's attention"
  reads (VisionZip's dominant tokens): the [CLS] row where the encoder has [CLS], the
  received attention otherwise.

Before::

    q, k, v = ...; attn = sdpa(q, k, v, scale=s)
After::

    q, k, v = ...; attn = sdpa(q, k, v, scale=s)
    received_attention = mean_q(mean_h(softmax(q @ k^T * s)))          # [B, N]
"""

from __future__ import annotations

from torch.fx import GraphModule

from tpc.methods.attention import received_attention
from tpc.passes.expose_cls_attention import _row
from tpc.passes.graph_lookup import TPC_VALUE, call_in_graph, find_attention, find_value
from tpc.passes.infra import PassContext, PassResult

VALUE_NAME = "received_attention"
SCORE_NAME = "attention_score"


def _received(gm: GraphModule, ctx: PassContext):
    layout = ctx.layout
    sdpa = find_attention(gm, layout.layers_path, layout.feature_layer)
    scale = sdpa.kwargs.get("scale")
    scale = layout.head_dim**-0.5 if scale is None else float(scale)
    # inserting_before(next) keeps the recorded ops in order (inserting_after would reverse them)
    with gm.graph.inserting_before(sdpa.next):
        constants = dict(scale=scale, drop_cls=layout.has_cls, group=layout.token_group)
        node = call_in_graph(gm, received_attention, sdpa.args[0], sdpa.args[1], **constants)
    return node, sdpa, scale


def expose_received_attention(gm: GraphModule, ctx: PassContext) -> PassResult:
    needs = set(ctx.method.needs)
    wanted = [name for name in (VALUE_NAME, SCORE_NAME) if name in needs and find_value(gm, name) is None]
    if not wanted:
        return PassResult(gm, False, {})
    layout = ctx.layout
    stats = {"layer": layout.feature_layer, "heads": layout.num_heads}
    for name in wanted:
        if name == SCORE_NAME and layout.has_cls:  # the encoder has a [CLS] row: that is its attention score
            node, sdpa, scale = _row(gm, ctx, layout.feature_layer)
            stats[name] = "cls_attention"
        else:
            node, sdpa, scale = _received(gm, ctx)
            stats[name] = "received_attention"
        node.meta[TPC_VALUE] = name
        stats.update(scale=scale, attention_node=sdpa.name)
    return PassResult(gm, True, stats)
