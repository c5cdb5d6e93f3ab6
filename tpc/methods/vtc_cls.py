"""VTC-CLS: the [CLS] attention rows of several ViT layers, summed, then top-k.

Default layers: from ``start_layer`` (16, as published for 24-layer CLIP) up to the
feature layer; the last layer is never used (LLaVA reads hidden_states[-2]).
"""

from __future__ import annotations

import torch

from tpc.methods.base import Param, SelectionMethod
from tpc.methods.fastervlm import select_by_scores
from tpc.methods.reference import reference_cls_rows
from tpc.methods.selection import gather_tokens, reference_topk_ascending


def vtc_layers(layout, params: dict) -> list[int]:
    start = min(int(params.get("start_layer", 16)), layout.feature_layer)
    return list(range(start, layout.feature_layer + 1))


def vtc_select(values, keep: int, start_layer: int = 16):
    scores = values["cls_attention_layers"].sum(dim=1)  # [B, L, N] -> [B, N]
    return select_by_scores(scores, values["patches"], keep)


@torch.no_grad()
def vtc_reference(adapter, pixel_values, keep: int, start_layer: int = 16):
    ref = adapter.reference_vision(pixel_values)
    rows = reference_cls_rows(adapter, ref, vtc_layers(adapter.vision, {"start_layer": start_layer}))
    scores = torch.stack(rows, dim=0).sum(dim=0)
    indices = reference_topk_ascending(scores, keep)
    return indices, adapter.project(gather_tokens(ref["patches"], indices)), scores


VTC_CLS = SelectionMethod(
    name="vtc-cls",
    description="[CLS] attention summed over ViT layers start_layer..feature layer, top-k in raster order",
    needs=("cls_attention_layers",),
    select=vtc_select,
    reference=vtc_reference,
    params=(Param("start_layer", int, 16, "first ViT layer of the ensemble (clamped to the feature layer)", 0),),
    attention_layers=vtc_layers,
    extra={"gathers": True},
)
