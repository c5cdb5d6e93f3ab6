"""Export the vision, embedding and decoder graphs of one model into a directory.

The graph and input/output names are the artifact contract of ``tpc.artifact_layout``
(re-exported here); the runtimes read them from there without importing torch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.fx import GraphModule

from tpc.artifact_layout import DECODER, EMBED, GRAPH_NAMES, VISION, kv_names
from tpc.compiler.onnx_export import export_onnx
from tpc.compiler.trace import MAX_BATCH, batch_dim
from tpc.models.base import TextLayout, VisionLayout


def export_vision(gm: GraphModule, layout: VisionLayout, out_dir: Path, dtype: torch.dtype = torch.float32) -> Path:
    sample = torch.zeros(2, 3, layout.image_size, layout.image_size, dtype=dtype)
    return export_onnx(
        gm,
        (sample,),
        out_dir / f"{VISION}.onnx",
        input_names=["pixel_values"],
        output_names=["image_features", "kept_indices"],
        dynamic_shapes={"pixel_values": {0: batch_dim()}},
        axis_names={"pixel_values": {0: "batch"}},
    )


def export_embedding(
    module: torch.nn.Module, text: TextLayout, feature_dim: int, out_dir: Path, dtype: torch.dtype = torch.float32
) -> Path:
    ids = torch.full((2, 7), 5, dtype=torch.int64)
    ids[:, 2:5] = text.image_token_id
    feats = torch.zeros(2, 3, feature_dim, dtype=dtype)
    seq = torch.export.Dim("seq", min=1, max=text.max_context)
    image_tokens = torch.export.Dim("image_tokens", min=1, max=4096)
    batch = batch_dim()
    return export_onnx(
        module,
        (ids, feats),
        out_dir / f"{EMBED}.onnx",
        input_names=["input_ids", "image_features"],
        output_names=["inputs_embeds"],
        dynamic_shapes={"input_ids": {0: batch, 1: seq}, "image_features": {0: batch, 1: image_tokens}},
        axis_names={"input_ids": {0: "batch", 1: "seq"}, "image_features": {1: "image_tokens"}},
    )


def export_decoder(
    module: torch.nn.Module, text: TextLayout, out_dir: Path, dtype: torch.dtype = torch.float32
) -> Path:
    """One decoder graph for prefill (past_seq = 0) and decode (seq = 1); embeddings and KV in ``dtype``."""
    b, s, p = 2, 5, 3  # distinct sample sizes so the tracer keeps the axes apart
    embeds = torch.zeros(b, s, text.hidden_size, dtype=dtype)
    mask = torch.ones(b, p + s, dtype=torch.int64)
    positions = torch.arange(p, p + s).expand(b, s).contiguous()
    if text.position_dims > 1:  # M-RoPE: (t, h, w) per token
        positions = positions[..., None].expand(b, s, text.position_dims).contiguous()
    past = tuple(torch.zeros(b, text.num_kv_heads, p, text.head_dim, dtype=dtype) for _ in range(2 * text.num_layers))
    batch = batch_dim()
    seq = torch.export.Dim("seq", min=1, max=text.max_context)
    past_seq = torch.export.Dim("past_seq", min=0, max=text.max_context)
    total = torch.export.Dim("total_seq", min=1, max=2 * text.max_context)
    past_names = kv_names(text.num_layers, "past")
    axis_names = {"inputs_embeds": {0: "batch", 1: "seq"}, "attention_mask": {1: "total_seq"}}
    axis_names.update({name: {2: "past_seq"} for name in past_names})
    return export_onnx(
        module,
        (embeds, mask, positions, past),
        out_dir / f"{DECODER}.onnx",
        input_names=["inputs_embeds", "attention_mask", "position_ids", *past_names],
        output_names=["logits", *kv_names(text.num_layers, "present")],
        dynamic_shapes={
            "inputs_embeds": {0: batch, 1: seq},
            "attention_mask": {0: batch, 1: total},
            "position_ids": {0: batch, 1: seq},
            "past": tuple({0: batch, 2: past_seq} for _ in past_names),
        },
        axis_names=axis_names,
    )


__all__ = [
    "GRAPH_NAMES",
    "VISION",
    "EMBED",
    "DECODER",
    "MAX_BATCH",
    "kv_names",
    "export_vision",
    "export_embedding",
    "export_decoder",
]
