"""VisionZip: dominant tokens by attention, the rest merged into contextual tokens.

With a [CLS] token (CLIP): output = [CLS] + top-(dominant-1) patches by [CLS] attention, in
original order. Without one (SigLIP): the top-``dominant`` patches by the attention they
receive at the feature layer (column mean over heads and query rows), no [CLS] slot
(METHODS.md). The graph reads either score as ``attention_score`` (exposed by
``expose_received_attention``: the [CLS] row where the encoder has one, the received
attention otherwise); ``resolve_params`` records which in the ``cls_token`` parameter.
Then ``contextual`` tokens: targets are evenly strided positions of the remaining
(unselected) patches, every other remaining patch joins its most cosine-similar target
(on the feature layer's keys averaged over heads; ties: first target), and a contextual
token is its target's hidden state plus the mean of its members. ``kept_indices`` gives
each output token's patch index: -1 for [CLS], the target's index for a contextual token.
"""

from __future__ import annotations

import torch

from tpc.errors import UsageError
from tpc.methods.base import SelectionMethod
from tpc.methods.params import PARAMS
from tpc.methods.reference import reference_cls_rows, reference_received
from tpc.methods.selection import gather_tokens, reference_topk_ascending, topk_ascending

PUBLISHED = (54, 10)


def split_budget(keep: int, params: dict) -> tuple[int, int]:
    """(dominant, contextual) with dominant + contextual = keep (dominant counts [CLS] where there is one)."""
    dominant, contextual = params.get("dominant"), params.get("contextual")
    if dominant and contextual:
        if dominant + contextual != keep:
            raise UsageError(f"visionzip: dominant {dominant} + contextual {contextual} != {keep} kept tokens")
    elif contextual:
        dominant = keep - contextual
    elif dominant:
        contextual = keep - dominant
    else:  # the published 54 + 10 split, scaled
        contextual = max(1, round(keep * PUBLISHED[1] / sum(PUBLISHED))) if keep > 1 else 0
        dominant = keep - contextual
    least = 2 if params.get("cls_token", True) else 1  # [CLS] and at least one patch
    if dominant < least or contextual < 0:
        raise UsageError(
            f"visionzip: {keep} kept tokens cannot split into dominant {dominant} + contextual {contextual}"
        )
    return int(dominant), int(contextual)


def resolve_params(layout, params: dict, given: set) -> tuple[dict, list[str]]:
    """Whether the encoder has a [CLS] token (it takes a dominant slot), recorded with the parameters."""
    return dict(params, cls_token=bool(layout.has_cls)), []


def resolve_keep(keep: int, params: dict) -> int:
    if params.get("dominant") and params.get("contextual"):
        return int(params["dominant"] + params["contextual"])
    return keep


def _counter(like):
    """0, 1, 2, ... along the last axis of ``like`` (graph-friendly arange)."""
    return torch.ones_like(like).cumsum(dim=-1) - 1


def visionzip_select(values, keep: int, dominant: int = 0, contextual: int = 0, cls_token: bool = True):
    dominant, contextual = split_budget(keep, {"dominant": dominant, "contextual": contextual, "cls_token": cls_token})
    hidden, keys, scores = values["hidden"], values["keys"], values["attention_score"]
    patches, patch_keys = (hidden[:, 1:], keys[:, 1:]) if cls_token else (hidden, keys)
    rows, cols = values["grid"]
    num_patches = rows * cols  # static: TopK needs a constant K
    picked = dominant - 1 if cls_token else dominant  # patches among the dominant tokens
    top = topk_ascending(scores, picked)  # patch indices [B, picked]
    dominant_tokens = gather_tokens(patches, top)
    indices = top
    if cls_token:
        dominant_tokens = torch.cat([hidden[:, 0:1], dominant_tokens], dim=1)
        indices = torch.cat([torch.zeros_like(top[:, :1]) - 1, top], dim=1)
    if contextual == 0:
        return indices, dominant_tokens
    rest_count = num_patches - picked
    # unselected patches in ascending order: selected ones sort after every index
    marker = torch.zeros_like(scores).scatter(1, top, 1.0)
    rest = torch.topk(marker * num_patches + _counter(scores), rest_count, dim=-1, largest=False).indices
    step = max(1, rest_count // contextual)
    targets = rest[:, ::step][:, :contextual]  # [B, c] patch indices
    rest_keys = torch.nn.functional.normalize(gather_tokens(patch_keys, rest), dim=-1)
    target_keys = torch.nn.functional.normalize(gather_tokens(patch_keys, targets), dim=-1)
    similarity = torch.matmul(rest_keys, target_keys.transpose(1, 2))  # [B, R, c]
    assign = torch.argmax(similarity, dim=-1, keepdim=True)  # first target on ties
    position = _counter(rest[:, :].to(hidden.dtype))  # position in the rest list
    is_member = 1.0 - ((torch.remainder(position, step) == 0) & (position < contextual * step)).to(hidden.dtype)
    members = (assign == _counter(similarity[:, :1, :]).to(assign.dtype)).to(hidden.dtype) * is_member.unsqueeze(-1)
    sums = torch.matmul(members.transpose(1, 2), gather_tokens(patches, rest))  # [B, c, Dv]
    counts = members.sum(dim=1).clamp(min=1.0).unsqueeze(-1)
    contextual_tokens = gather_tokens(patches, targets) + sums / counts
    return torch.cat([indices, targets], dim=1), torch.cat([dominant_tokens, contextual_tokens], dim=1)


@torch.no_grad()
def visionzip_reference(
    adapter, pixel_values, keep: int, dominant: int = 0, contextual: int = 0, cls_token: bool | None = None
):
    """Per sample, with Python lists and loops: an independent reading of METHODS.md."""
    has_cls = adapter.vision.has_cls
    dominant, contextual = split_budget(keep, {"dominant": dominant, "contextual": contextual, "cls_token": has_cls})
    ref = adapter.reference_vision(pixel_values)
    if has_cls:
        scores = reference_cls_rows(adapter, ref, [adapter.vision.feature_layer])[0]
    else:
        scores = reference_received(adapter, ref)
    first = 1 if has_cls else 0  # where the patches start in the token axis
    keys = ref["keys"].mean(dim=1)  # [B, T, hd]
    hidden = ref["hidden"]
    n = scores.shape[-1]
    out_tokens, out_indices = [], []
    for b in range(hidden.shape[0]):
        top = reference_topk_ascending(scores[b : b + 1], dominant - first)[0].tolist()
        tokens = ([hidden[b, 0]] if has_cls else []) + [hidden[b, first + i] for i in top]
        indices = ([-1] if has_cls else []) + top
        chosen = set(top)
        rest = [i for i in range(n) if i not in chosen]
        if contextual:
            step = max(1, len(rest) // contextual)
            targets = [rest[j * step] for j in range(contextual)]
            members = {t: [] for t in targets}
            target_keys = keys[b, [first + t for t in targets]]
            for i in rest:
                if i in members:
                    continue
                sims = torch.nn.functional.cosine_similarity(keys[b, first + i][None], target_keys, dim=-1).tolist()
                best = max(range(contextual), key=lambda j: (sims[j], -j))
                members[targets[best]].append(i)
            for t in targets:
                extra = torch.stack([hidden[b, first + m] for m in members[t]]).mean(0) if members[t] else 0.0
                tokens.append(hidden[b, first + t] + extra)
                indices.append(t)
        out_tokens.append(torch.stack(tokens))
        out_indices.append(indices)
    return torch.tensor(out_indices), adapter.project(torch.stack(out_tokens)), scores


VISIONZIP = SelectionMethod(
    name="visionzip",
    description="[CLS] (where there is one) + top dominant patches by attention, the rest merged into "
    "contextual tokens by key similarity",
    needs=("attention_score", "hidden", "keys"),
    select=visionzip_select,
    reference=visionzip_reference,
    params=PARAMS["visionzip"],
    resolve_keep=resolve_keep,
    resolve_params=resolve_params,
    extra={"validate_keep": lambda n, keep, params: split_budget(keep, params)},
)
