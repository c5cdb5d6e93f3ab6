"""cls-mass: an adaptive budget, the smallest set of patches holding ``mass`` of the [CLS] attention.

Per image: sort the [CLS] attention row over patches in descending order, take the
cumulative sum, and count how many leading patches are needed for it to reach ``mass``
(of the row's total over patches, so the [CLS] column does not count). The graph
computes the count; the runtime rounds it UP to the next compiled bucket and selects
exactly that many by FasterVLM's top-k (METHODS.md, "Adaptive budgets and buckets").
"""

from __future__ import annotations

import torch

from tpc.methods.base import SelectionMethod
from tpc.methods.fastervlm import fastervlm_reference, fastervlm_select
from tpc.methods.params import PARAMS


def mass_count(cls_attention, mass: float):
    """[B, N] scores -> [B] int64: smallest n with sum of the n largest >= mass * total."""
    ranked = torch.topk(cls_attention, cls_attention.shape[-1], dim=-1).values
    share = ranked.cumsum(dim=-1) / ranked.sum(dim=-1, keepdim=True)
    below = (share < mass).to(torch.int64).sum(dim=-1)
    return torch.clamp(below + 1, max=cls_attention.shape[-1])


@torch.no_grad()
def reference_mass_count(scores: torch.Tensor, mass: float) -> list[int]:
    """Per sample with a Python loop over the sorted scores."""
    counts = []
    for row in scores:
        values = sorted(row.tolist(), reverse=True)
        total, running, count = sum(values), 0.0, len(values)
        for n, value in enumerate(values, start=1):
            running += value
            if running >= mass * total:
                count = n
                break
        counts.append(count)
    return counts


def cls_mass_select(values, keep: int, mass: float = 0.9):
    return fastervlm_select(values, keep)


def cls_mass_reference(adapter, pixel_values, keep: int, mass: float = 0.9):
    return fastervlm_reference(adapter, pixel_values, keep)


CLS_MASS = SelectionMethod(
    name="cls-mass",
    description="adaptive budget: fewest patches holding `mass` of the [CLS] attention, rounded up to a bucket",
    needs=("cls_attention",),
    select=cls_mass_select,
    reference=cls_mass_reference,
    params=PARAMS["cls-mass"],
    extra={"gathers": True, "adaptive": mass_count, "needs_buckets": True},
)
