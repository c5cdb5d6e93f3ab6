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
