"""Insert the token-selection subgraph at the vision/LLM boundary.

The method's ``select`` is recorded into the graph from the values earlier passes
exposed: for most methods before the projector (on the patch tokens), for methods
defined on projected tokens (DivPrune) after it. Every K is a Python constant, so TopK
exports with a constant K. The kept indices become a second graph output.

Before::

    patches = hidden[:, 1:]                      # [B, N, Dv]
    features = projector(patches)                # [B, N, D]
    return (features,)
After (pre-projector method)::

    kept, tokens = method.select({cls_attention, patches, ...}, K)   # [B, K], [B, K, Dv]
    features = projector(tokens)                 # [B, K, D]
    return (features, kept)
"""

from __future__ import annotations

from torch.fx import GraphModule

from tpc.errors import ExportError
from tpc.methods.base import POST_PROJECTOR
from tpc.passes.graph_lookup import (
    TPC_VALUE,
    find_value,
    in_module,
    output_node,
    output_values,
    record_select,
    set_output_values,
)
from tpc.passes.infra import PassContext, PassResult

VALUE_NAME = "kept_indices"


def insert_token_selection(gm: GraphModule, ctx: PassContext) -> PassResult:
    if find_value(gm, VALUE_NAME) is not None:
        return PassResult(gm, False, {})
    method = ctx.method
    inputs = {}
    for name in method.needs:
        node = find_value(gm, name)
        if node is None:
            raise ExportError(f"method {method.name} needs graph value {name!r}, which no earlier pass exposed")
        inputs[name] = node
    side = int(round(ctx.layout.num_patches**0.5))
    static = {"grid": ctx.layout.grid or (side, side)}
    outputs = output_values(gm)
    if method.stage == POST_PROJECTOR:
        inputs["features"] = outputs[0]
        with gm.graph.inserting_before(output_node(gm)):
            kept, tokens = record_select(gm, method.select, inputs, static, keep=ctx.keep, **ctx.params)
        set_output_values(gm, [tokens] + outputs[1:] + [kept])
        boundary = outputs[0].name
    else:
        entry, patches = projector_entry(gm, ctx.layout.projector_path)
        inputs["patches"] = patches
        with gm.graph.inserting_before(entry):
            kept, tokens = record_select(gm, method.select, inputs, static, keep=ctx.keep, **ctx.params)
        entry.replace_input_with(patches, tokens)
        set_output_values(gm, outputs + [kept])
        boundary = entry.name
    kept.meta[TPC_VALUE] = VALUE_NAME
    return PassResult(
        gm,
        True,
        {
            "method": method.name,
            "keep": ctx.keep,
            "tokens_before": ctx.layout.num_patches,
            "stage": method.stage,
            "boundary_node": boundary,
            "params": dict(ctx.params),
        },
    )


def projector_entry(gm: GraphModule, projector_path: str):
    """The first projector node and the patch-token node it reads from outside."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and in_module(node, projector_path):
            outside = [a for a in node.all_input_nodes if a.op != "get_attr" and not in_module(a, projector_path)]
            if len(outside) == 1:
                return node, outside[0]
    raise ExportError(f"cannot find the entry of {projector_path} (the vision/LLM boundary) in the graph")
