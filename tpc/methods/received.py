"""received: keep the patches that RECEIVE the most attention at the feature layer.

Score = ``softmax(Q K^T * scale)`` of the feature layer, averaged over heads, then over every query
row (the column mean): the score that replaces the [CLS] row for vision encoders without [CLS]
(SigLIP in LLaVA-OneVision; VisionZip, HoliTom and VisPruner use it, METHODS.md). On an encoder with
[CLS] the [CLS] key column is dropped (the [CLS] query row still counts). Top-``keep`` in ascending
order, then the projector on the kept patch features. The graph recomputes the one layer's attention
matrix from its own q/k (``tpc.passes.expose_received_attention``).
"""

from __future__ import annotations

import torch

from tpc.methods.base import SelectionMethod
from tpc.methods.fastervlm import select_by_scores
from tpc.methods.params import PARAMS
from tpc.methods.reference import reference_received
from tpc.methods.selection import gather_tokens, reference_topk_ascending


def received_select(values, keep: int):
    return select_by_scores(values["received_attention"], values["patches"], keep)


@torch.no_grad()
def received_reference(adapter, pixel_values: torch.Tensor, keep: int):
    ref = adapter.reference_vision(pixel_values)
    scores = reference_received(adapter, ref)
    indices = reference_topk_ascending(scores, keep)
    return indices, adapter.project(gather_tokens(ref["patches"], indices)), scores


RECEIVED = SelectionMethod(
    name="received",
    description="attention each patch receives at the feature layer (column mean over heads and queries), top-k",
    needs=("received_attention",),
    select=received_select,
    reference=received_reference,
    params=PARAMS["received"],
    extra={"gathers": True},
)
