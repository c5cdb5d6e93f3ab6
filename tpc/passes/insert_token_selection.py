"""Insert the token-selection subgraph at the vision/LLM boundary.

The method's score is recorded into the graph from the values earlier passes exposed,
then top-k with a constant K, ascending order, and a gather of the patch features
feeding the projector. The kept indices become a second graph output.

Before::

    patches = hidden[:, 1:]                      # [B, N, Dv]
    features = projector(patches)                # [B, N, D]
    return (features,)
After::

    scores = method.score(cls_attention, ...)    # [B, N]
    kept = topk(topk(scores, K).indices, K, largest=False).values   # [B, K]
    features = projector(gather(patches, kept))  # [B, K, D]
    return (features, kept)
"""

from __future__ import annotations

from torch.fx import GraphModule

from tpc.errors import ExportError
from tpc.methods.selection import gather_tokens, topk_ascending
from tpc.passes.graph_lookup import (
    TPC_VALUE,
    call_in_graph,
    find_value,
    in_module,
    output_values,
    set_output_values,
)
from tpc.passes.infra import PassContext, PassResult

VALUE_NAME = "kept_indices"


def insert_token_selection(gm: GraphModule, ctx: PassContext) -> PassResult:
    if find_value(gm, VALUE_NAME) is not None:
        return PassResult(gm, False, {})
    entry, patches = _projector_entry(gm, ctx.layout.projector_path)
    inputs = []
    for name in ctx.method.needs:
        node = find_value(gm, name)
        if node is None:
            raise ExportError(f"method {ctx.method.name} needs graph value {name!r}, which no earlier pass exposed")
        inputs.append(node)
    with gm.graph.inserting_before(entry):
        scores = call_in_graph(gm, ctx.method.score, *inputs)
        kept = call_in_graph(gm, topk_ascending, scores, keep=ctx.keep)
        gathered = call_in_graph(gm, gather_tokens, patches, kept)
    scores.meta[TPC_VALUE] = "scores"
    kept.meta[TPC_VALUE] = VALUE_NAME
    entry.replace_input_with(patches, gathered)
    set_output_values(gm, output_values(gm) + [kept])
    return PassResult(
        gm, True, {"method": ctx.method.name, "keep": ctx.keep, "tokens_before": ctx.layout.num_patches,
                   "boundary_node": entry.name},
    )


def _projector_entry(gm: GraphModule, projector_path: str):
    """The first projector node and the patch-feature node it reads from outside."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and in_module(node, projector_path):
            outside = [a for a in node.all_input_nodes if a.op != "get_attr" and not in_module(a, projector_path)]
            if len(outside) == 1:
                return node, outside[0]
    raise ExportError(f"cannot find the entry of {projector_path} (the vision/LLM boundary) in the graph")
