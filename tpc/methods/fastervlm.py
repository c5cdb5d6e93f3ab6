"""FasterVLM: keep the patches the feature layer's [CLS] query attends to most.

Score = softmax(q_cls . K^T * scale) over the feature layer's keys, mean over heads,
[CLS] key column dropped, no renormalisation; top-``keep`` in ascending order, then the
projector on the kept patch features (METHODS.md).
"""

from __future__ import annotations

import torch

from tpc.methods.base import SelectionMethod
from tpc.methods.reference import reference_cls_rows
from tpc.methods.selection import gather_tokens, reference_topk_ascending, topk_ascending


def select_by_scores(scores, patches, keep: int):
    kept = topk_ascending(scores, keep)
    return kept, gather_tokens(patches, kept)


def fastervlm_select(values, keep: int):
    return select_by_scores(values["cls_attention"], values["patches"], keep)


@torch.no_grad()
def fastervlm_reference(adapter, pixel_values: torch.Tensor, keep: int):
    ref = adapter.reference_vision(pixel_values)
    scores = reference_cls_rows(adapter, ref, [adapter.vision.feature_layer])[0]
    indices = reference_topk_ascending(scores, keep)
    return indices, adapter.project(gather_tokens(ref["patches"], indices)), scores


FASTERVLM = SelectionMethod(
    name="fastervlm",
    description="[CLS] attention of the feature layer (one query row), top-k in raster order",
    needs=("cls_attention",),
    select=fastervlm_select,
    reference=fastervlm_reference,
    extra={"gathers": True},
)
