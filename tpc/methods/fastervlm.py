"""FasterVLM: keep the patches the feature layer's [CLS] query attends to most.

Score = softmax(q_cls . K^T * scale) over the feature layer's keys, mean over heads,
[CLS] key column dropped, no renormalisation; top-``keep`` in ascending order, then the
projector on the kept patch features (METHODS.md).
"""

from __future__ import annotations

import torch

from tpc.methods.base import SelectionMethod
from tpc.methods.selection import gather_tokens, reference_topk_ascending


def fastervlm_score(cls_attention: torch.Tensor) -> torch.Tensor:
    """The [CLS] attention row over patches is the score as it stands."""
    return cls_attention


@torch.no_grad()
def fastervlm_reference(adapter, pixel_values: torch.Tensor, keep: int):
    """Eager FasterVLM on the original model; returns (kept indices [B,K], features [B,K,D])."""
    ref = adapter.reference_vision(pixel_values)
    logits = torch.einsum("bhqd,bhkd->bhqk", ref["cls_q"], ref["keys"]) * ref["scale"]
    scores = torch.softmax(logits, dim=-1)[:, :, 0, 1:].mean(dim=1)
    indices = reference_topk_ascending(scores, keep)
    features = adapter.project(gather_tokens(ref["patches"], indices))
    return indices, features, scores


FASTERVLM = SelectionMethod(
    name="fastervlm",
    description="[CLS] attention of the feature layer (one query row), top-k in raster order",
    needs=("cls_attention",),
    score=fastervlm_score,
    reference=fastervlm_reference,
)
