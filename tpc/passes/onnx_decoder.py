"""The ONNX passes the compiler runs on a flat ``decoder`` graph before its weights are quantized.

Each pass is local, checks its pattern before it rewrites, and leaves a graph without the pattern
as it was (a Qwen2.5-VL decoder's M-RoPE rotary is not touched). The order matters: the key layout
first (ONNX Runtime then folds the transpose into the score MatMul), then the norms (residual Add +
norm fused first, the remaining one into the form ONNX Runtime fuses), then the projection merge (its
weights are what the quantizer packs), then the rotary embedding and, on it, the attention.
``--target ort`` quantized decoders only: see ``pipeline._quantize``.
"""

from __future__ import annotations

from typing import Any

import onnx

from tpc.onnx_graph import GraphView
from tpc.passes.onnx_group_query_attention import KV_BUFFER_KEY, group_query_attention
from tpc.passes.onnx_kv_layout import key_transpose
from tpc.passes.onnx_merge_projections import merge_projections
from tpc.passes.onnx_rms_norm import rms_norm_as_division
from tpc.passes.onnx_rotary import MAX_POSITIONS_KEY, rotary_embedding
from tpc.passes.onnx_skip_rms_norm import skip_rms_norm

DECODER_PASSES = (key_transpose, skip_rms_norm, rms_norm_as_division, merge_projections)


def optimize_decoder(
    model: onnx.ModelProto, max_positions: int | None = None, passes=DECODER_PASSES, attention: bool = True
) -> dict[str, Any]:
    """Run ``passes`` on the model's main graph in place; returns {pass name: rewrites}.

    ``max_positions`` (the model's context): also the rotary embedding as ``RotaryEmbedding`` with cos/sin
    caches of that many rows, recorded in the model's metadata as ``tpc.max_positions``; then, with
    ``attention``, each layer's attention as ``GroupQueryAttention`` (its KV cache can be one buffer the
    runtime owns, recorded as ``tpc.kv_buffer``).
    """
    view = GraphView(model.graph)
    rewrites = {fn.__name__: fn(view) for fn in passes}
    metadata = {}
    if max_positions is not None:
        rewrites["rotary_embedding"] = rotary_embedding(view, max_positions)
        if rewrites["rotary_embedding"]:
            metadata[MAX_POSITIONS_KEY] = str(max_positions)
        if attention:
            rewrites["group_query_attention"] = group_query_attention(view)
            if rewrites["group_query_attention"]:
                metadata[KV_BUFFER_KEY] = "shared"
    if metadata:
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **metadata})
    domains = {entry.domain for entry in model.opset_import}
    if "com.microsoft" not in domains and any(node.domain == "com.microsoft" for node in model.graph.node):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return rewrites
