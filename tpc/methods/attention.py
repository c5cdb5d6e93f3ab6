"""Attention scores recomputed from a layer's own q/k, one query row at a time.

Fused attention (SDPA, FlashAttention, TensorRT MHA) never materialises attention
weights, so scores are recomputed for the rows a method needs: for [CLS] that is one
query row, O(T * d) per head instead of O(T^2 * d).
"""

from __future__ import annotations

import torch


def cls_attention_row(query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
    """[CLS] query's attention over the patch keys, mean over heads: [B,H,T,d] x2 -> [B,T-1].

    Position 0 is [CLS]; its own key column is dropped afterwards with no
    renormalisation (FasterVLM's score).
    """
    cls_query = query[:, :, 0:1, :]
    logits = torch.matmul(cls_query, key.transpose(-1, -2)) * scale
    probs = torch.softmax(logits, dim=-1)
    row = probs.mean(dim=1).squeeze(1)
    return row[:, 1:]
