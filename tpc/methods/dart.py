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

DART inside the LLM (``dart-llm``, ``tpc.models.decoder_segments.DartStageSelect``) shares the
pivots and the greedy (``dart_pivots``, ``pivot_counts``, ``dart_greedy``) with two changes of
input only: the pivots are picked by given keys (``image_key``/``text_key``: the L1 norms of a
decoder layer's keys) instead of the rows' own L1 norms, and the rows are the final-normed
hidden states. ``dart_select_any_length`` takes the quota as an input's length (image blocks of
any length); it masks the image pivot slots at or beyond the quota.
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
    image: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    image_count: int,
    text_pivots: int,
    image_key: torch.Tensor | None = None,
    text_key: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pivot slots in visiting order (fp32 inputs).

    Returns (image pivot indices [B,image_count], pivot vectors [B,P,D], valid [B,P] bool)
    with ``P = image_count + text_pivots``; image slots are always valid, text slot k is
    valid when the prompt has more than k real text rows. Pivots are the rows with the
    largest ``image_key`` [B,n] / ``text_key`` [B,T] (fp32, >= 0); default: the rows' own L1
    norms (DART at the LLM input). DART inside the LLM passes the L1 norms of a layer's keys.
    """
    image_key = image.abs().sum(-1) if image_key is None else image_key
    image_pivots, _ = _argmax_picks(image_key, image_count)
    vectors = [_rows(image, image_pivots)]
    valid = [torch.ones_like(image_pivots, dtype=torch.bool)]
    if text_pivots:
        real = text_mask != 0
        text_key = text.abs().sum(-1) if text_key is None else text_key
        key = torch.where(real, text_key, torch.full_like(text[..., 0], _MASKED))
        text_index, picked_key = _argmax_picks(key, text_pivots)
        vectors.append(_rows(text, text_index))
        valid.append(picked_key >= 0)  # a masked (-1) or exhausted (-2) row is no pivot
    return image_pivots, torch.cat(vectors, dim=1), torch.cat(valid, dim=1)


def pivot_counts(valid: torch.Tensor, total: int | torch.Tensor) -> torch.Tensor:
    """Tokens each pivot slot takes: ``ceil(remaining / pivots_left)`` over the valid slots, 0 for
    invalid ones. ``valid`` [B,P], ``total`` tokens to hand out (an int, or a 0-d/[B] int64 tensor)
    -> [B,P]. An invalid slot takes nothing and is not counted among the pivots left."""
    valid = valid.to(torch.int64)
    if isinstance(total, torch.Tensor):  # a count derived from an input's shape (any-length selectors)
        remaining = torch.zeros_like(valid[:, 0]) + total
    else:
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


def dart_greedy(image: torch.Tensor, pivots: torch.Tensor, kept: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """DART's greedy over one span: pivot slot p (in order) takes the ``counts[:, p]`` pool tokens with the
    LOWEST cosine to ``pivots[:, p]`` (ties: lower index) and removes them from the pool.

    ``image`` [B,n,D] and ``pivots`` [B,P,D] fp32; ``kept`` [B,n] float 0/1 (the image pivots, already
    kept); ``counts`` [B,P] int64. Returns the final kept mask [B,n] (float 0/1).
    """
    n = image.shape[1]
    cosine = pivot_cosine(pivots, image)  # [B,P,n]
    index = torch.arange(n, device=image.device)
    lower = (index.unsqueeze(1) < index.unsqueeze(0)).unsqueeze(0)  # [1,n,n]: j < i at [j,i]
    for slot in range(pivots.shape[1]):
        take = pool_rank(cosine[:, slot], kept, lower) < counts[:, slot : slot + 1]
        kept = kept + take.to(kept.dtype) * (1.0 - kept)
    return kept


def dart_select(
    image: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    keep: int,
    image_pivots: int = 4,
    text_pivots: int = 4,
    image_key: torch.Tensor | None = None,
    text_key: torch.Tensor | None = None,
) -> torch.Tensor:
    """Kept image-token indices [B,keep] (int64, ascending) of one span; see the module docstring.

    ``image_key`` [B,n] / ``text_key`` [B,T]: what the pivots are picked by (largest first), in
    place of the rows' own L1 norms (``dart_pivots``)."""
    n = image.shape[1]
    check_dart_args(keep, image_pivots, text_pivots, n)
    image, text = image.float(), text.float()
    image_count = min(image_pivots, keep)
    image_index, pivots, valid = dart_pivots(image, text, text_mask, image_count, text_pivots, image_key, text_key)
    counts = pivot_counts(valid, keep - image_count)
    kept = torch.zeros_like(image[..., 0]).scatter(1, image_index, 1.0)  # [B,n] 0/1
    return ascending_from_mask(dart_greedy(image, pivots, kept, counts), keep)


def dart_select_any_length(
    image: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    keep_rows: torch.Tensor,
    image_pivots: int,
    text_pivots: int,
    image_key: torch.Tensor | None = None,
    text_key: torch.Tensor | None = None,
) -> torch.Tensor:
    """``dart_select`` for a span length and quota known only at run time: ``keep`` is the length of
    ``keep_rows`` (= arange(keep)), ``n`` the length of ``image``. The ``image_pivots`` image slots are
    static; slot s is a pivot when s < keep (``min(image_pivots, keep)`` of them, as in ``dart_select``),
    the others are masked out of the pivots and of the kept set."""
    image, text = image.float(), text.float()
    n = image.shape[1]
    keep = torch.ones_like(keep_rows).sum()  # 0-d int64: the quota, from the input's length
    slot = torch.arange(image_pivots, device=image.device)
    image_ok = (slot < keep).unsqueeze(0).expand(image.shape[0], -1)  # [B,image_pivots]
    image_index, pivots, valid = dart_pivots(image, text, text_mask, image_pivots, text_pivots, image_key, text_key)
    valid = torch.cat([image_ok, valid[:, image_pivots:]], dim=1)
    counts = pivot_counts(valid, keep - image_ok[0].to(torch.int64).sum())  # keep - min(image_pivots, keep)
    index = torch.arange(n, device=image.device)
    picked = (index[None, None, :] == image_index[:, :, None]) & image_ok[:, :, None]  # [B,image_pivots,n]
    kept = picked.any(dim=1).to(image.dtype)
    return ascending_from_mask(dart_greedy(image, pivots, kept, counts), keep_rows.shape[0])


__all__ = [
    "DART_PARAMS",
    "check_dart_args",
    "dart_greedy",
    "dart_pivots",
    "dart_select",
    "dart_select_any_length",
    "pivot_counts",
]
