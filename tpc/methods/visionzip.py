"""VisionZip: dominant tokens by [CLS] attention, the rest merged into contextual tokens.

Output = [CLS] + top-(dominant-1) patches in original order, then ``contextual``
tokens: targets are evenly strided positions of the remaining (unselected) patches,
every other remaining patch joins its most cosine-similar target (on the feature
layer's keys averaged over heads; ties: first target), and a contextual token is its
target's hidden state plus the mean of its members (METHODS.md). ``kept_indices``
gives each output token's patch index: -1 for [CLS], the target's index for a
contextual token.
"""

from __future__ import annotations

import torch

from tpc.errors import UsageError
from tpc.methods.base import SelectionMethod
from tpc.methods.params import PARAMS
from tpc.methods.reference import reference_cls_rows
from tpc.methods.selection import gather_tokens, reference_topk_ascending, topk_ascending

PUBLISHED = (54, 10)


def split_budget(keep: int, params: dict) -> tuple[int, int]:
    """(dominant, contextual) with dominant + contextual = keep."""
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
    if dominant < 2 or contextual < 0:
        raise UsageError(
            f"visionzip: {keep} kept tokens cannot split into dominant {dominant} + contextual {contextual}"
        )
    return int(dominant), int(contextual)


def resolve_keep(keep: int, params: dict) -> int:
    if params.get("dominant") and params.get("contextual"):
        return int(params["dominant"] + params["contextual"])
    return keep


def _counter(like):
    """0, 1, 2, ... along the last axis of ``like`` (graph-friendly arange)."""
    return torch.ones_like(like).cumsum(dim=-1) - 1


def visionzip_select(values, keep: int, dominant: int = 0, contextual: int = 0):
    dominant, contextual = split_budget(keep, {"dominant": dominant, "contextual": contextual})
    hidden, keys, scores = values["hidden"], values["keys"], values["cls_attention"]
    patches, patch_keys = hidden[:, 1:], keys[:, 1:]
    rows, cols = values["grid"]
    num_patches = rows * cols  # static: TopK needs a constant K
    top = topk_ascending(scores, dominant - 1)  # patch indices [B, d-1]
    dominant_tokens = torch.cat([hidden[:, 0:1], gather_tokens(patches, top)], dim=1)
    cls_index = torch.zeros_like(top[:, :1]) - 1
    if contextual == 0:
        return torch.cat([cls_index, top], dim=1), dominant_tokens
    rest_count = num_patches - (dominant - 1)
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
    return torch.cat([cls_index, top, targets], dim=1), torch.cat([dominant_tokens, contextual_tokens], dim=1)


@torch.no_grad()
def visionzip_reference(adapter, pixel_values, keep: int, dominant: int = 0, contextual: int = 0):
    """Per sample, with Python lists and loops: an independent reading of METHODS.md."""
    dominant, contextual = split_budget(keep, {"dominant": dominant, "contextual": contextual})
    ref = adapter.reference_vision(pixel_values)
    scores = reference_cls_rows(adapter, ref, [adapter.vision.feature_layer])[0]
    keys = ref["keys"].mean(dim=1)  # [B, T, hd]
    hidden = ref["hidden"]
    n = scores.shape[-1]
    out_tokens, out_indices = [], []
    for b in range(hidden.shape[0]):
        top = reference_topk_ascending(scores[b : b + 1], dominant - 1)[0].tolist()
        tokens = [hidden[b, 0]] + [hidden[b, 1 + i] for i in top]
        indices = [-1] + top
        chosen = set(top)
        rest = [i for i in range(n) if i not in chosen]
        if contextual:
            step = max(1, len(rest) // contextual)
            targets = [rest[j * step] for j in range(contextual)]
            members = {t: [] for t in targets}
            for i in rest:
                if i in members:
                    continue
                sims = [torch.nn.functional.cosine_similarity(keys[b, 1 + i], keys[b, 1 + t], dim=0) for t in targets]
                best = max(range(contextual), key=lambda j: (sims[j].item(), -j))
                members[targets[best]].append(i)
            for t in targets:
                extra = torch.stack([hidden[b, 1 + m] for m in members[t]]).mean(0) if members[t] else 0.0
                tokens.append(hidden[b, 1 + t] + extra)
                indices.append(t)
        out_tokens.append(torch.stack(tokens))
        out_indices.append(indices)
    return torch.tensor(out_indices), adapter.project(torch.stack(out_tokens)), scores


VISIONZIP = SelectionMethod(
    name="visionzip",
    description="[CLS] + top dominant patches, remaining patches merged into contextual tokens by key similarity",
    needs=("cls_attention", "hidden", "keys"),
    select=visionzip_select,
    reference=visionzip_reference,
    params=PARAMS["visionzip"],
    resolve_keep=resolve_keep,
    extra={"validate_keep": lambda n, keep, params: split_budget(keep, params)},
)
