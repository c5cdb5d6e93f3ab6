"""Eager reference helpers shared by the methods' references (independent of the graph code)."""

from __future__ import annotations

import torch


@torch.no_grad()
def reference_cls_rows(adapter, ref: dict, layers: list[int]) -> list[torch.Tensor]:
    """[CLS] attention rows over patches [B,N] per layer, from a full attention matrix.

    Deliberately the naive way (materialise softmax(Q K^T)) so that it checks the
    one-row computation the graph does.
    """
    rows = []
    for layer in layers:
        q, k, scale = adapter.reference_qk(ref["hidden_states"], layer)
        attention = torch.softmax(torch.einsum("bhqd,bhkd->bhqk", q, k) * scale, dim=-1)
        rows.append(attention[:, :, 0, 1:].mean(dim=1))
    return rows


@torch.no_grad()
def reference_received(adapter, ref: dict, layer: int | None = None) -> torch.Tensor:
    """Attention each patch receives at ``layer`` (default: the feature layer) [B,N], from a full attention
    matrix built from the layer's own modules: mean over heads, then over all query rows; the [CLS] key
    column dropped where the encoder has one."""
    layer = adapter.vision.feature_layer if layer is None else layer
    q, k, scale = adapter.reference_qk(ref["hidden_states"], layer)
    attention = torch.softmax(torch.einsum("bhqd,bhkd->bhqk", q, k) * scale, dim=-1)
    column = attention.mean(dim=1).mean(dim=1)
    pool = getattr(adapter, "pool_patch_scores", None)  # patches -> LLM tokens (Qwen's merger: mean of 4)
    if pool is not None:
        return pool(column, ref)
    return column[:, 1:] if adapter.vision.has_cls else column
