"""Top-k selection in raster order, as graph code and as an independent reference."""

from __future__ import annotations

import torch


def topk_ascending(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` highest scores, in ascending index order. [B,N] -> [B,keep].

    Graph form: both steps are TopK with a constant K (ONNX TopK breaks ties toward
    the lower index; the second TopK sorts the indices without a data-dependent K).
    """
    best = torch.topk(scores, keep, dim=-1, largest=True, sorted=True).indices
    return torch.topk(best, keep, dim=-1, largest=False, sorted=True).values


def gather_tokens(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Rows ``indices`` [B,K] of ``tokens`` [B,N,D] -> [B,K,D]."""
    index = indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
    return torch.gather(tokens, 1, index)


def reference_topk_ascending(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Reference of ``topk_ascending`` with the tie rule made explicit: lower index wins."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :keep]
    return torch.sort(order, dim=-1).values
