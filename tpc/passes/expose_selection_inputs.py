"""Cut the vision graph at the selection: output what the method reads (bucketed artifacts).

A bucketed artifact serves several kept-token counts. Its vision *encoder* ends where
selection begins and outputs the method's inputs; one small selector graph per bucket
(constant K each) and a shared projector follow at run time, so no weight is stored
or loaded twice. Adaptive methods also get their per-image count here (``adaptive_keep``).

Before::

    ... cls_attention = ...; features = projector(hidden[:, 1:]); return (features,)
After (pre-projector method)::

    ... return (cls_attention, ..., patches[, adaptive_keep])   # projector removed as dead code
"""

from __future__ import annotations

from torch.fx import GraphModule

from tpc.errors import ExportError
from tpc.methods.base import POST_PROJECTOR
from tpc.passes.graph_lookup import TPC_VALUE, call_in_graph, find_value, output_node, output_values, set_output_values
from tpc.passes.infra import PassContext, PassResult
from tpc.passes.insert_token_selection import projector_entry

ADAPTIVE = "adaptive_keep"


def selection_input_names(method) -> list[str]:
    """Encoder output names, in order: the method's needs, then patches/features, then the count."""
    tokens = "features" if method.stage == POST_PROJECTOR else "patches"
    return list(method.needs) + [tokens] + ([ADAPTIVE] if method.extra.get("adaptive") else [])


def expose_selection_inputs(gm: GraphModule, ctx: PassContext) -> PassResult:
    if find_value(gm, "encoder_outputs") is not None:
        return PassResult(gm, False, {})
    method = ctx.method
    values = []
    for name in method.needs:
        node = find_value(gm, name)
        if node is None:
            raise ExportError(f"method {method.name} needs graph value {name!r}, which no earlier pass exposed")
        values.append(node)
    values.append(
        output_values(gm)[0] if method.stage == POST_PROJECTOR else projector_entry(gm, ctx.layout.projector_path)[1]
    )
    adaptive = method.extra.get("adaptive")
    if adaptive is not None:
        with gm.graph.inserting_before(output_node(gm)):
            count = call_in_graph(gm, adaptive, find_value(gm, "cls_attention"), mass=float(ctx.params["mass"]))
        values.append(count)
    set_output_values(gm, values)
    before = len(gm.graph.nodes)
    gm.graph.eliminate_dead_code(is_impure_node=lambda n: n.op in ("placeholder", "output"))
    gm.delete_all_unused_submodules()
    output_node(gm).meta[TPC_VALUE] = "encoder_outputs"
    return PassResult(
        gm, True, {"outputs": selection_input_names(method), "removed_nodes": before - len(gm.graph.nodes)}
    )
