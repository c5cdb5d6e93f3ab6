"""Attention scores recomputed from a layer's own q/k.

Fused attention (SDPA, FlashAttention, TensorRT MHA) never materialises attention
weights, so scores are recomputed for the rows a method needs: for [CLS] that is one
query row, O(T * d) per head instead of O(T^2 * d); the attention a token receives
(encoders without [CLS]) needs every row of that one layer.
"""

from __future__ import annotations

import torch


def cls_attention_row(query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
    """[CLS] query's attention over the patch keys, mean over heads: [B,H,T,d] x2 -> [B,T-1].

    Position 0 is [CLS]; its own key column is dropped afterwards with no
    renormalisation (FasterVLM's score).
    """
    cls_query = query[:, :, 0:1, :].float()  # fp32 inside half-precision graphs: the score decides the kept set
    logits = torch.matmul(cls_query, key.float().transpose(-1, -2)) * scale
    probs = torch.softmax(logits, dim=-1)
    row = probs.mean(dim=1).squeeze(1)
    return row[:, 1:]


def received_attention(
    query: torch.Tensor, key: torch.Tensor, scale: float, drop_cls: bool = False, group: int = 1
) -> torch.Tensor:
    """Attention each token RECEIVES: ``softmax(Q K^T * scale)`` averaged over heads, then over every query
    row (the column mean). [B,H,T,d] x2 -> [B,T], or [B,T-1] with the [CLS] key column dropped (``drop_cls``;
    the [CLS] query row still counts, no renormalisation), or [B,T/group] averaged over each run of ``group``
    consecutive tokens (the patches one merged token is made of).

    The score that replaces the [CLS] row for encoders without one (SigLIP; METHODS.md). It needs the whole
    T x T matrix of the one layer, O(T^2 * d) per head: one more attention matrix, not one per layer.
    """
    logits = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scale  # fp32 in half graphs
    probs = torch.softmax(logits, dim=-1)  # [B, H, T, T]
    column = probs.mean(dim=1).mean(dim=1)  # heads, then query rows
    if group > 1:  # several patches per LLM token (Qwen's 2x2 merger, consecutive patches): their mean
        return column.reshape(column.shape[0], -1, group).mean(dim=-1)
    return column[:, 1:] if drop_cls else column
