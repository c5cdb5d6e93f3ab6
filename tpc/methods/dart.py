"""DART at the LLM input: keep the image tokens least duplicated by a few pivot tokens.

One call handles ONE image span of ``n`` tokens per sample (METHODS.md, "Selection at the
LLM input"); the caller computes the quota ``keep = clamp(ceil(n*(1-R)), 1, n)`` and
calls once per span with the same prompt rows:

    dart_select(image [B,n,D], text [B,T,D], text_mask [B,T], keep) -> kept [B,keep] int64, ascending

``text`` (T >= 1 rows) may be the whole assembled input embeddings: ``text_mask`` (bool
or 0/1) marks the rows that count as prompt text (not image, not padding). All norms and
cosines are fp32 whatever the embeddings' dtype.

The rule, per sample:

1. image pivots: the ``min(image_pivots, keep)`` span tokens with the largest L1 norm;
   they are kept and count toward the quota;
2. text pivots: the ``text_pivots`` masked-in text rows with the largest L1 norm. A prompt
   with fewer real text rows has fewer text pivots (masked rows are never pivots);
3. the pivots are visited in order (image pivots by descending L1, then text pivots by
   descending L1); each takes ``per = ceil(remaining / pivots_left)`` tokens with the
   LOWEST cosine ``dot / max(|p||c|, 1e-8)`` to it from the pool and removes them;
4. ties on L1 or cosine: the lower index wins; the result is sorted ascending.

Graph form (static shapes, no data-dependent Python): pivots are picked by repeated
ArgMax (first index on ties, in PyTorch and ONNX alike). The number of valid text pivots
may differ per sample, so the pivot slots are static (``min(image_pivots, keep) +
text_pivots``), invalid slots are masked, and the per-pivot counts are [B] tensors. Each
pivot ranks every pool token by (cosine, index) with pairwise comparisons (an N x N
compare and one matmul per pivot: exact, with the same tie rule in PyTorch and ONNX) and
takes the tokens ranked below its ``per``. The kept mask becomes ascending indices with
one constant-K TopK. Cost: P compares of n x n (a few ms at n = 576 in ONNX Runtime on
CPU, see benchmarks/cdpruner_loop.py), node count independent of ``keep``.
"""

from __future__ import annotations

import torch

from tpc.errors import UsageError
from tpc.methods.params import Param

# Below every L1 norm (norms are >= 0): a masked or already-picked row never wins ArgMax.
_MASKED, _PICKED = -1.0, -2.0

DART_PARAMS: tuple[Param, ...] = (
    Param("image_pivots", int, 4, "image pivots per span: the largest-L1 image tokens (kept, part of the quota)", 1),
    Param("text_pivots", int, 4, "text pivots: the largest-L1 prompt rows (fewer if the prompt is shorter)", 0),
)


def check_dart_args(keep: int, image_pivots: int, text_pivots: int, tokens: int) -> None:
    """One-line errors for values the method cannot run with (the CLI ranges catch most first)."""
    if not 1 <= keep <= tokens:
        raise UsageError(f"dart: keep={keep} is outside [1, {tokens}] (the span has {tokens} image tokens)")
    if image_pivots < 1:
        raise UsageError(f"dart: image_pivots={image_pivots} must be at least 1")
    if text_pivots < 0:
        raise UsageError(f"dart: text_pivots={text_pivots} must be at least 0")


def _argmax_picks(key: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` repeated ArgMax picks over ``key`` [B,N] (first index on ties), each pick then
    marked ``_PICKED``. Returns the picks [B,count] and the key each had when picked [B,count]."""
    picks, values = [], []
    for _ in range(count):
        pick = torch.argmax(key, dim=-1, keepdim=True)
        picks.append(pick)
        values.append(torch.gather(key, 1, pick))
        key = key.scatter(1, pick, _PICKED)
    return torch.cat(picks, dim=1), torch.cat(values, dim=1)


def _rows(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def dart_pivots(
    image: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, image_count: int, text_pivots: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pivot slots in visiting order (fp32 inputs).

    Returns (image pivot indices [B,image_count], pivot vectors [B,P,D], valid [B,P] bool)
    with ``P = image_count + text_pivots``; image slots are always valid, text slot k is
    valid when the prompt has more than k real text rows.
    """
    image_pivots, _ = _argmax_picks(image.abs().sum(-1), image_count)
    vectors = [_rows(image, image_pivots)]
    valid = [torch.ones_like(image_pivots, dtype=torch.bool)]
    if text_pivots:
        real = text_mask != 0
        key = torch.where(real, text.abs().sum(-1), torch.full_like(text[..., 0], _MASKED))
        text_index, picked_key = _argmax_picks(key, text_pivots)
        vectors.append(_rows(text, text_index))
        valid.append(picked_key >= 0)  # a masked (-1) or exhausted (-2) row is no pivot
    return image_pivots, torch.cat(vectors, dim=1), torch.cat(valid, dim=1)


def pivot_counts(valid: torch.Tensor, total: int) -> torch.Tensor:
    """Tokens each pivot slot takes: ``ceil(remaining / pivots_left)`` over the valid slots, 0 for
    invalid ones. ``valid`` [B,P] (valid slots form a prefix), ``total`` tokens to hand out -> [B,P]."""
    valid = valid.to(torch.int64)
    remaining = torch.full_like(valid[:, 0], total)
    left = valid.sum(dim=1)
    counts = []
    for slot in range(valid.shape[1]):
        divisor = left.clamp(min=1)
        per = torch.div(remaining + divisor - 1, divisor, rounding_mode="floor") * valid[:, slot]
        counts.append(per)
        remaining = remaining - per
        left = left - valid[:, slot]
    return torch.stack(counts, dim=1)


def pivot_cosine(pivots: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``dot / max(|p||c|, 1e-8)`` between pivots [B,P,D] and tokens [B,N,D] -> [B,P,N] (fp32)."""
    dots = torch.matmul(pivots, tokens.transpose(1, 2))
    norms = pivots.norm(dim=-1).unsqueeze(-1) * tokens.norm(dim=-1).unsqueeze(1)
    return dots / norms.clamp(min=1e-8)


def pool_rank(key: torch.Tensor, kept: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """Rank of each token among the pool (``kept == 0``) by (``key`` ascending, index ascending): the
    number of pool tokens j that come before i. [B,N] -> [B,N] (kept tokens get meaningless ranks).

    Pairwise comparisons instead of a sort: exact ties go to the lower index in PyTorch and
    ONNX alike (``torch.topk`` breaks ties arbitrarily on CPU; a stable sort does not export)."""
    before_key = key.unsqueeze(-1) < key.unsqueeze(1)  # [B,j,i]: key_j < key_i
    tied_lower = (key.unsqueeze(-1) == key.unsqueeze(1)) & lower
    before = (before_key | tied_lower).to(torch.float32)
    return torch.matmul((1.0 - kept).unsqueeze(1), before).squeeze(1)  # sum over pool j


def ascending_from_mask(mask: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` ones of ``mask`` [B,N] (float 0/1), ascending, via one constant-K TopK.
    The keys ``2N*mask - index`` are distinct, so no tie rule is involved."""
    n = mask.shape[-1]
    index = torch.arange(n, device=mask.device, dtype=torch.float32)
    key = mask * (2.0 * n) - index
    return torch.topk(key, keep, dim=-1, largest=True, sorted=True).indices


def dart_select(
    image: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    keep: int,
    image_pivots: int = 4,
    text_pivots: int = 4,
) -> torch.Tensor:
    """Kept image-token indices [B,keep] (int64, ascending) of one span; see the module docstring."""
    n = image.shape[1]
    check_dart_args(keep, image_pivots, text_pivots, n)
    image, text = image.float(), text.float()
    image_count = min(image_pivots, keep)
    image_index, pivots, valid = dart_pivots(image, text, text_mask, image_count, text_pivots)
    counts = pivot_counts(valid, keep - image_count)
    cosine = pivot_cosine(pivots, image)  # [B,P,n]
    kept = torch.zeros_like(image[..., 0]).scatter(1, image_index, 1.0)  # [B,n] 0/1
    index = torch.arange(n, device=image.device)
    lower = (index.unsqueeze(1) < index.unsqueeze(0)).unsqueeze(0)  # [1,n,n]: j < i at [j,i]
    for slot in range(pivots.shape[1]):
        take = pool_rank(cosine[:, slot], kept, lower) < counts[:, slot : slot + 1]
        kept = kept + take.to(kept.dtype) * (1.0 - kept)
    return ascending_from_mask(kept, keep)


__all__ = ["DART_PARAMS", "check_dart_args", "dart_pivots", "dart_select", "pivot_counts"]
