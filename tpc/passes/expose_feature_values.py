"""Expose the feature layer's hidden states and keys for methods that merge tokens.

``hidden``: the feature layer's output with [CLS] [B,T,Dv] (the tensor LLaVA slices
``[:, 1:]`` before the projector; for an encoder without [CLS], the patch tokens
themselves); ``keys``: that layer's key vectors averaged over heads [B,T,hd] (read from
its SDPA node).

Before::

    hidden = layers.22(...); patches = hidden[:, 1:]; ...; attn = sdpa(q, k, v)
After::

    ... keys = mean_h(k)      # tagged; ``hidden`` is tagged in place
"""

from __future__ import annotations

from torch.fx import GraphModule

from tpc.passes.graph_lookup import TPC_VALUE, call_in_graph, find_attention, find_value
from tpc.passes.infra import PassContext, PassResult
from tpc.passes.insert_token_selection import projector_entry


def _mean_heads(key, group: int = 1):
    keys = key.mean(dim=1)  # [B, T, hd]
    if group > 1:  # several patches per LLM token (consecutive): the token's key is their mean
        keys = keys.reshape(keys.shape[0], -1, group, keys.shape[-1]).mean(dim=2)
    return keys


def expose_feature_values(gm: GraphModule, ctx: PassContext) -> PassResult:
    needs = set(ctx.method.needs)
    stats = {}
    if "hidden" in needs and find_value(gm, "hidden") is None:
        _, patches = projector_entry(gm, ctx.layout.projector_path)
        # with [CLS]: patches = slice(hidden, 1, 1, end); without (SigLIP): the patches are the hidden states
        hidden = patches.args[0] if ctx.layout.has_cls else patches
        hidden.meta[TPC_VALUE] = "hidden"
        stats["hidden"] = hidden.name
    if "keys" in needs and find_value(gm, "keys") is None:
        sdpa = find_attention(gm, ctx.layout.layers_path, ctx.layout.feature_layer)
        with gm.graph.inserting_before(sdpa.next):
            keys = call_in_graph(gm, _mean_heads, sdpa.args[1], group=ctx.layout.token_group)
        keys.meta[TPC_VALUE] = "keys"
        stats["keys"] = keys.name
    return PassResult(gm, bool(stats), stats)
