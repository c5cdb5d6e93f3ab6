"""VTC-CLS: the [CLS] attention rows of several ViT layers, summed, then top-k.

Default layers: from ``start_layer`` (16, as published for 24-layer CLIP) up to the
feature layer; the last layer is never used (LLaVA reads hidden_states[-2]).
"""

from __future__ import annotations

import torch

from tpc.errors import UsageError
from tpc.methods.base import SelectionMethod
from tpc.methods.fastervlm import select_by_scores
from tpc.methods.params import PARAMS
from tpc.methods.reference import reference_cls_rows
from tpc.methods.selection import gather_tokens, reference_topk_ascending


def vtc_layers(layout, params: dict) -> list[int]:
    """ViT layers start_layer..feature layer; a start past the feature layer is refused, never clamped."""
    start = int(params.get("start_layer", 16))
    if start > layout.feature_layer:
        raise UsageError(
            f"vtc-cls start_layer={start} is past this ViT's feature layer {layout.feature_layer} "
            f"(layers 0..{layout.feature_layer} are usable); pass --method-arg start_layer=N with N <= "
            f"{layout.feature_layer}"
        )
    return list(range(start, layout.feature_layer + 1))


def resolve_vtc_params(layout, params: dict, given: set) -> tuple[dict, list[str]]:
    """A start layer the user gave must exist; the published default 16 starts at the feature layer on a
    shallower ViT, and the manifest records the layer actually used."""
    start = int(params["start_layer"])
    if start <= layout.feature_layer:
        return params, []
    if "start_layer" in given:
        vtc_layers(layout, params)  # raises the one-line error
    used = dict(params, start_layer=layout.feature_layer)
    note = (
        f"vtc-cls: this ViT's feature layer is {layout.feature_layer}, so the default start_layer=16 "
        f"becomes {layout.feature_layer} (one layer); pass --method-arg start_layer=N to choose"
    )
    return used, [note]


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
    params=PARAMS["vtc-cls"],
    attention_layers=vtc_layers,
    resolve_params=resolve_vtc_params,
    extra={"gathers": True},
)
