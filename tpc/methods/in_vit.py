"""Eager reference of in-ViT selection: select at layer J, run the later layers on [CLS] + K tokens."""

from __future__ import annotations

import torch

from tpc.methods.reference import reference_cls_rows
from tpc.methods.selection import gather_tokens, reference_topk_ascending


@torch.no_grad()
def in_vit_reference(adapter, pixel_values, keep: int, layer: int):
    """FasterVLM scored at ViT layer ``layer``; layers after it run on the kept tokens only."""
    ref = adapter.reference_vision(pixel_values)
    scores = reference_cls_rows(adapter, ref, [layer])[0]
    indices = reference_topk_ascending(scores, keep)
    hidden = ref["hidden_states"][layer + 1]  # output of layer J
    hidden = torch.cat([hidden[:, :1], gather_tokens(hidden[:, 1:], indices)], dim=1)
    layers = adapter.model.model.vision_tower.encoder.layers
    for index in range(layer + 1, adapter.vision.feature_layer + 1):
        hidden = layers[index](hidden, None)
    return indices, adapter.project(hidden[:, 1:]), scores
