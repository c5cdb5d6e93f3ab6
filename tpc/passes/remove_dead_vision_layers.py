"""Remove the vision layers that run after the feature layer.

LLaVA reads ``hidden_states[-2]``, so the last ViT layer's output is never used; the
tower still runs it. FX's dead-code elimination keeps it because SDPA nodes count as
impure (their dropout argument), so this pass removes dead nodes treating only
placeholders and outputs as impure, then drops the weights nobody reads.

Before::

    layers.22 -> hidden_states[23] -> [:, 1:] -> projector -> output
    layers.23 (sdpa, mlp, ...)    # result unused
After::

    layers.22 -> hidden_states[23] -> [:, 1:] -> projector -> output
"""

from __future__ import annotations

from torch.fx import GraphModule

from tpc.passes.graph_lookup import layer_prefix, nodes_in
from tpc.passes.infra import PassContext, PassResult


def remove_dead_vision_layers(gm: GraphModule, ctx: PassContext) -> PassResult:
    layout = ctx.layout
    later = range(layout.feature_layer + 1, layout.num_layers)
    before = {i: len(nodes_in(gm, layer_prefix(layout.layers_path, i))) for i in later}
    if not any(before.values()):
        return PassResult(gm, False, {"removed_layers": [], "removed_nodes": 0})
    count = len(gm.graph.nodes)
    gm.graph.eliminate_dead_code(is_impure_node=lambda n: n.op in ("placeholder", "output"))
    removed_nodes = count - len(gm.graph.nodes)
    after = {i: len(nodes_in(gm, layer_prefix(layout.layers_path, i))) for i in later}
    removed_layers = [i for i in later if before[i] and not after[i]]
    if removed_nodes:
        gm.delete_all_unused_submodules()
    return PassResult(
        gm,
        removed_nodes > 0,
        {
            "removed_layers": removed_layers,
            "removed_nodes": removed_nodes,
            "live_layers_after_feature": [i for i in later if after[i]],
        },
    )
