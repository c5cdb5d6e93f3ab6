"""Select inside the vision tower: at ViT layer J, keep [CLS] + the top-K patches.

``--select-layer J`` moves a [CLS]-attention method from the feature layer to layer J:
the score is layer J's own [CLS] row, the K kept patches (ascending) and [CLS] continue
through layers J+1..feature layer, which then run on 1+K tokens instead of 1+N. The
feature layer's output is therefore already the kept tokens; the projector maps them.
The token count that later layers' reshapes carry as a constant is rewritten to 1+K.

Before::

    h_J = layer_J(h); h_J1 = layer_J+1(h_J)             # [B, 1+N, D] all the way
After::

    kept = topk_ascending(cls_row_J, K)
    h_J' = cat(h_J[:, :1], gather(h_J[:, 1:], kept))    # [B, 1+K, D]
    h_J1 = layer_J+1(h_J')                              # reshapes use 1+K
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule

from tpc.errors import UsageError
from tpc.passes.expose_cls_attention import _row
from tpc.passes.graph_lookup import (
    TPC_VALUE,
    find_value,
    layer_prefix,
    nodes_in,
    output_values,
    record_select,
    set_output_values,
)
from tpc.passes.infra import PassContext, PassResult

_SHAPE_OPS = {
    torch.ops.aten.view.default,
    torch.ops.aten.reshape.default,
    torch.ops.aten._unsafe_view.default,
    torch.ops.aten.expand.default,
}


def _with_cls(values, keep: int, method=None, params=None):
    kept, tokens = method.select(values, keep, **params)
    hidden = values["hidden"]
    return kept, torch.cat([hidden[:, 0:1], tokens], dim=1)


def select_in_vit(gm: GraphModule, ctx: PassContext) -> PassResult:
    layer = ctx.select_layer
    layout = ctx.layout
    if layer is None or layer == layout.feature_layer or find_value(gm, "kept_indices") is not None:
        return PassResult(gm, False, {})
    if not 0 <= layer < layout.feature_layer:
        raise UsageError(f"--select-layer {layer} is outside [0, {layout.feature_layer}] (the feature layer)")
    if ctx.method.name != "fastervlm":
        raise UsageError(f"--select-layer applies to fastervlm ([CLS] attention top-k), not {ctx.method.name}")
    row, _, _ = _row(gm, ctx, layer)
    layer_nodes = nodes_in(gm, layer_prefix(layout.layers_path, layer))
    out = layer_nodes[-1]  # the layer's last op: its residual add, the layer output
    users = list(out.users)
    with gm.graph.inserting_after(out):
        patches = gm.graph.call_function(torch.ops.aten.slice.Tensor, (out, 1, 1, 2**63 - 1))
    with gm.graph.inserting_before(patches.next):  # keeps recorded ops in order
        values = {"cls_attention": row, "hidden": out, "patches": patches}
        kept, shortened = record_select(
            gm, _with_cls, values, {"grid": _grid(layout)}, keep=ctx.keep, method=ctx.method, params=ctx.params
        )
    for user in users:
        user.replace_input_with(out, shortened)
    rewritten = _rewrite_token_count(gm, layout, layer, layout.num_patches + 1, ctx.keep + 1)
    kept.meta[TPC_VALUE] = "kept_indices"
    set_output_values(gm, output_values(gm) + [kept])
    gm.graph.eliminate_dead_code(is_impure_node=lambda n: n.op in ("placeholder", "output"))
    return PassResult(
        gm, True, {"select_layer": layer, "keep": ctx.keep, "tokens_after": ctx.keep + 1, "rewritten_shapes": rewritten}
    )


def _grid(layout) -> tuple[int, int]:
    side = int(round(layout.num_patches**0.5))
    return side, side


def _rewrite_token_count(gm: GraphModule, layout, layer: int, old: int, new: int) -> int:
    count = 0
    for index in range(layer + 1, layout.num_layers):
        for node in nodes_in(gm, layer_prefix(layout.layers_path, index)):
            if node.op == "call_function" and node.target in _SHAPE_OPS and isinstance(node.args[1], (list, tuple)):
                shape = [new if (isinstance(d, int) and d == old) else d for d in node.args[1]]
                if shape != list(node.args[1]):
                    node.args = (node.args[0], shape, *node.args[2:])
                    count += 1
    return count
