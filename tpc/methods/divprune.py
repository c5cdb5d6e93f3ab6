"""DivPrune: max-min diversity on the projected features (greedy k-center).

Distance = 1 - cosine similarity between projected tokens. First pick: the token whose
nearest other token is farthest; then repeatedly the token farthest from the selected
set (max over candidates of the min distance to the selected), ties to the first index;
result sorted ascending (METHODS.md).

Graph form: one N x N distance matrix, then a running minimum over a static number of
unrolled steps, O(k*N) after the matrix: step i gathers the distance row of the token
picked at step i-1 and takes an elementwise minimum. Selected tokens are masked out.
"""

from __future__ import annotations

import numpy as np
import torch

from tpc.methods.base import POST_PROJECTOR, SelectionMethod
from tpc.methods.selection import gather_tokens

_BIG = 4.0  # above any cosine distance (<= 2)


def cosine_distance(features):
    unit = torch.nn.functional.normalize(features, dim=-1)
    return 1.0 - torch.matmul(unit, unit.transpose(1, 2))  # [B, N, N]


def divprune_select(values, keep: int):
    features = values["features"]
    distance = cosine_distance(features)
    eye = torch.diag_embed(torch.ones_like(distance[:, 0]))  # [B, N, N]
    nearest_other = (distance + eye * _BIG).amin(dim=-1)  # [B, N]
    pick = torch.argmax(nearest_other, dim=-1, keepdim=True)  # [B, 1], first index on ties
    picks = [pick]
    chosen = torch.zeros_like(nearest_other).scatter(1, pick, 1.0)
    running = torch.gather(distance, 1, pick.unsqueeze(-1).expand(-1, 1, distance.shape[-1])).squeeze(1)
    for _ in range(keep - 1):
        pick = torch.argmax(running - chosen * _BIG, dim=-1, keepdim=True)
        picks.append(pick)
        chosen = chosen.scatter(1, pick, 1.0)
        row = torch.gather(distance, 1, pick.unsqueeze(-1).expand(-1, 1, distance.shape[-1])).squeeze(1)
        running = torch.minimum(running, row)
    order = torch.cat(picks, dim=1)
    kept = torch.topk(order, keep, dim=-1, largest=False).values
    return kept, gather_tokens(features, kept)


@torch.no_grad()
def naive_divprune(features: torch.Tensor, keep: int) -> torch.Tensor:
    """The greedy with the min recomputed from scratch at every step (no running minimum), per sample: [B,K]
    sorted. numpy on the float32 distances (first index on ties: ``np.argmax``'s rule)."""
    out = []
    for sample in features:
        unit = torch.nn.functional.normalize(sample, dim=-1)
        dist = (1.0 - unit @ unit.T).numpy().astype(np.float64)
        n = len(dist)
        nearest = np.where(np.eye(n, dtype=bool), np.inf, dist).min(axis=1)
        selected = [int(np.argmax(nearest))]
        while len(selected) < keep:
            to_selected = dist[:, selected].min(axis=1)  # distance of every token to the selected set
            to_selected[selected] = -np.inf
            selected.append(int(np.argmax(to_selected)))
        out.append(sorted(selected))
    return torch.tensor(out)


@torch.no_grad()
def divprune_reference(adapter, pixel_values, keep: int):
    features = adapter.project(adapter.reference_vision(pixel_values)["patches"])
    indices = naive_divprune(features, keep)
    return indices, gather_tokens(features, indices), None


DIVPRUNE = SelectionMethod(
    name="divprune",
    description="max-min diversity (greedy k-center) on cosine distance of the projected tokens",
    needs=(),
    select=divprune_select,
    reference=divprune_reference,
    stage=POST_PROJECTOR,
    prunes_at="after the projector (vision/LLM boundary)",
    # a reduced-precision check compares its kept set at the graph's own picks, replaying the greedy
    extra={"gathers": True, "greedy": "max-min"},
)

__all__ = ["DIVPRUNE", "divprune_select", "naive_divprune"]
