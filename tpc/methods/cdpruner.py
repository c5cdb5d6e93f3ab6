"""CDPruner at the LLM input: a DPP over one image span, conditioned on the prompt.

One call handles ONE image span of ``n`` tokens per sample (METHODS.md, "Selection at the
LLM input"):

    cdpruner_select(image [B,n,D], text [B,T,D], text_mask [B,T], keep, variant="paper",
                    relevance_weight=0.5, split=1) -> kept [B,keep] int64, ascending

``text_mask`` (bool or 0/1) marks the prompt rows that count (not image, not padding);
``text`` may be the whole assembled input embeddings. Math is fp32 whatever the dtype.

``variant="paper"`` (the paper's kernel, METHODS.md):

* X = the span's rows L2-normalised (``x / max(|x|, 1e-12)``), S = X X^T with its
  diagonal set to exactly 1 (0 for an all-zero row), so that tokens whose gains are
  mathematically equal tie exactly and the lower index wins;
* relevance r_i = ``dot(x_i, m) / max(|x_i||m|, 1e-8)`` with m the mean of the real text
  rows (m = 0 when there are none), min-max normalised over the span. Degenerate case:
  when max == min (no text rows, or every token equally relevant) r = 1 everywhere, so
  the kernel is S itself (pure diversity) instead of a 0/0;
* K = diag(r) S diag(r).

``variant="openvino"`` is OpenVINO GenAI's published CDPruner (its ``conditional_kernel``
graph and ``FastGreedyDPP``), for comparison; it is not the paper's semantics:

* rows normalised as ``x / sqrt(|x|^2 + 1e-6)``; relevance = the MEAN over the real text
  rows of the cosine with each row (not the cosine with their mean), min-max normalised
  with ``(s - min) / (max - min + 1e-6)`` (all equal: r = 0); no text rows: r = 0;
* K = (1 - w) S + w diag(r) S diag(r), ``w = relevance_weight`` (OpenVINO's
  ``relevance_weight``, 0.5 in its samples and docs);
* ``split=1`` (OpenVINO's default, ``CDPRUNER_SPLIT_THRESHOLD=1``): a span of more than
  one token is cut into halves ``[0, n//2)`` and ``[n//2, n)``, each with its own
  relevance and kernel, keeping ``keep//2`` and ``keep - keep//2`` tokens. OpenVINO also
  rounds its count up to an even number and computes it with round(); tpc keeps the
  budget it was given.

Greedy MAP (both variants), the standard incremental-Cholesky fast greedy: gains
d_i^2 = K_ii; each step picks the largest gain (ArgMax: first index on ties), forms
e = (K_j - sum_s c_s[j] c_s) / d_j, subtracts e^2 from the gains and sets the picked gain
to -inf. A pick whose gain is not positive (the kernel's rank is spent) contributes
e = 0, so the remaining order stays well defined. Exactly ``keep`` steps, unrolled (a
constant trip count); the picks are then sorted ascending by a constant-K TopK.

Spans of any length (unpruned multi-crop pictures): ``cdpruner_select_any_length`` takes the
quota as the length of ``keep_rows`` (= arange(keep)) and runs the same kernel and greedy
through ``greedy_map_rows``, a custom op whose step count is the length of its second input.
Eagerly it is ``greedy_map``; exported, it is one placeholder node that
``tpc.compiler.greedy_loop`` replaces with an ONNX Loop of that many steps.
"""

from __future__ import annotations

import torch

from tpc.errors import UsageError
from tpc.methods.params import Param

VARIANTS = ("paper", "openvino")
_OPENVINO_EPS = 1e-6  # OpenVINO GenAI's ``numerical_threshold``


def _variant(text: str) -> str:
    if text not in VARIANTS:
        raise ValueError(text)
    return text


_variant.__name__ = "one of " + ", ".join(VARIANTS)  # Param.parse names the kind in its error

CDPRUNER_PARAMS: tuple[Param, ...] = (
    Param("variant", _variant, "paper", "paper: diag(r) S diag(r); openvino: OpenVINO GenAI's mixture kernel"),
    Param("relevance_weight", float, 0.5, "openvino only: w in (1-w) S + w diag(r) S diag(r)", 0.0, 1.0),
    Param("split", int, 1, "openvino only: 1 prunes the span's two halves apart (OpenVINO's default)", 0, 1),
)


def check_cdpruner_args(keep: int, tokens: int, variant: str, relevance_weight: float, split: int) -> None:
    """One-line errors for values the method cannot run with (the CLI ranges catch most first)."""
    if not 1 <= keep <= tokens:
        raise UsageError(f"cdpruner: keep={keep} is outside [1, {tokens}] (the span has {tokens} image tokens)")
    if variant not in VARIANTS:
        raise UsageError(f"cdpruner: variant={variant!r} is not one of {', '.join(VARIANTS)}")
    if not 0.0 <= relevance_weight <= 1.0:
        raise UsageError(f"cdpruner: relevance_weight={relevance_weight} must be in [0, 1]")
    if split not in (0, 1):
        raise UsageError(f"cdpruner: split={split} must be 0 or 1")


def _real_rows(text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [B,T,1] fp32, real-row count [B,1] clamped to at least 1)."""
    real = (text_mask != 0).to(torch.float32).unsqueeze(-1)
    return real, real.sum(dim=1).clamp(min=1.0)


def paper_relevance(image: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """Cosine of each span row with the mean real text row, min-max over the span -> [B,n] (fp32 inputs)."""
    real, count = _real_rows(text_mask)
    mean = (text * real).sum(dim=1) / count  # [B,D]
    dots = torch.matmul(image, mean.unsqueeze(-1)).squeeze(-1)  # [B,n]
    norms = image.norm(dim=-1) * mean.norm(dim=-1, keepdim=True)
    cosine = dots / norms.clamp(min=1e-8)
    low = cosine.amin(dim=-1, keepdim=True)
    high = cosine.amax(dim=-1, keepdim=True)
    spread = high > low
    scaled = (cosine - low) / torch.where(spread, high - low, torch.ones_like(high))
    return torch.where(spread, scaled, torch.ones_like(scaled))


def _openvino_unit(rows: torch.Tensor) -> torch.Tensor:
    return rows / torch.sqrt((rows * rows).sum(dim=-1, keepdim=True) + _OPENVINO_EPS)


def openvino_relevance(image: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """OpenVINO GenAI's relevance: mean cosine with the real text rows, min-max (+1e-6) -> [B,n]."""
    real, count = _real_rows(text_mask)
    cosine = torch.matmul(_openvino_unit(image), _openvino_unit(text).transpose(1, 2))  # [B,n,T]
    score = torch.matmul(cosine, real).squeeze(-1) / count  # [B,n]
    low = score.amin(dim=-1, keepdim=True)
    high = score.amax(dim=-1, keepdim=True)
    return (score - low) / (high - low + _OPENVINO_EPS)


def conditional_kernel(
    image: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, variant: str = "paper", relevance_weight=0.5
) -> torch.Tensor:
    """The DPP kernel of one span [B,n,n], fp32 (see the module docstring for both variants)."""
    image, text = image.float(), text.float()
    if variant == "paper":
        norms = image.norm(dim=-1, keepdim=True)
        unit = image / norms.clamp(min=1e-12)
        similarity = torch.matmul(unit, unit.transpose(1, 2))
        index = torch.arange(image.shape[1], device=image.device)
        diagonal = (index.unsqueeze(0) == index.unsqueeze(1)).unsqueeze(0)  # [1,n,n]
        # S_ii is exactly 1 (0 for a zero row), not 1 +- rounding: equal gains stay equal ties
        similarity = torch.where(diagonal, (norms > 0).to(similarity.dtype), similarity)
        relevance = paper_relevance(image, text, text_mask)
    else:
        unit = _openvino_unit(image)
        similarity = torch.matmul(unit, unit.transpose(1, 2))
        relevance = openvino_relevance(image, text, text_mask)
    conditioned = relevance.unsqueeze(-1) * similarity * relevance.unsqueeze(1)
    if variant == "paper":
        return conditioned
    return (1.0 - relevance_weight) * similarity + relevance_weight * conditioned


def greedy_map(kernel: torch.Tensor, steps: int) -> torch.Tensor:
    """Fast greedy DPP MAP on ``kernel`` [B,n,n]: ``steps`` unrolled picks [B,steps], in pick order."""
    n = kernel.shape[-1]
    gains = torch.diagonal(kernel, dim1=1, dim2=2)  # d_i^2 = K_ii
    picks, rows = [], None  # rows: the Cholesky rows c_s [B,t,n] picked so far
    for step in range(steps):
        pick = torch.argmax(gains, dim=-1, keepdim=True)  # [B,1], first index on ties
        row = torch.gather(kernel, 1, pick.unsqueeze(-1).expand(-1, 1, n))  # K_j [B,1,n]
        if rows is not None:
            coeff = torch.gather(rows, 2, pick.unsqueeze(1).expand(-1, step, 1))  # c_s[j] [B,t,1]
            row = row - torch.matmul(coeff.transpose(1, 2), rows)
        gain = torch.gather(gains, 1, pick).unsqueeze(-1)  # d_j^2 [B,1,1]
        positive = gain > 0
        row = torch.where(positive, row / torch.sqrt(torch.where(positive, gain, torch.ones_like(gain))), 0.0)
        gains = (gains - row.squeeze(1) ** 2).scatter(1, pick, float("-inf"))
        rows = row if rows is None else torch.cat([rows, row], dim=1)
        picks.append(pick)
    if not picks:  # no step (the first half of a one-token quota, openvino split)
        return torch.zeros(kernel.shape[0], 0, dtype=torch.int64, device=kernel.device)
    return torch.cat(picks, dim=1)


@torch.library.custom_op("tpc::cdpruner_greedy_map", mutates_args=())
def greedy_map_rows(kernel: torch.Tensor, steps_rows: torch.Tensor) -> torch.Tensor:
    """``greedy_map`` for as many steps as ``steps_rows`` has rows: a count known at run time from a shape.
    Exported, it is one placeholder node (``tpc.compiler.greedy_loop``) that becomes an ONNX Loop."""
    return greedy_map(kernel, steps_rows.shape[0])


@greedy_map_rows.register_fake
def _greedy_map_rows_shape(kernel: torch.Tensor, steps_rows: torch.Tensor) -> torch.Tensor:
    return kernel.new_empty((kernel.shape[0], steps_rows.shape[0]), dtype=torch.int64)


def cdpruner_select(
    image: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    keep: int,
    variant: str = "paper",
    relevance_weight: float = 0.5,
    split: int = 1,
) -> torch.Tensor:
    """Kept image-token indices [B,keep] (int64, ascending) of one span; see the module docstring."""
    n = image.shape[1]
    check_cdpruner_args(keep, n, variant, relevance_weight, split)
    if variant == "openvino" and split and n > 1:
        half = n // 2
        parts = [(0, half, keep // 2), (half, n, keep - keep // 2)]
    else:
        parts = [(0, n, keep)]
    picks = []
    for start, stop, count in parts:
        if count:
            kernel = conditional_kernel(image[:, start:stop], text, text_mask, variant, relevance_weight)
            picks.append(greedy_map(kernel, count) + start)
    order = torch.cat(picks, dim=1)
    return torch.topk(order, keep, dim=-1, largest=False, sorted=True).values


def cdpruner_select_any_length(
    image: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    keep_rows: torch.Tensor,
    variant: str = "paper",
    relevance_weight: float = 0.5,
    split: int = 1,
) -> torch.Tensor:
    """``cdpruner_select`` for a span length and quota known only at run time: ``keep`` is the length of
    ``keep_rows`` (= arange(keep)), ``n`` the length of ``image``; the same kernels, the same greedy (run by
    ``greedy_map_rows``), the same picks. The caller checks the arguments (``check_cdpruner_args``)."""
    n, keep = image.shape[1], keep_rows.shape[0]
    args = (text, text_mask, variant, relevance_weight)
    # a traced (symbolic) n always takes the halves: a one-token span's first half is empty and keeps nothing,
    # which is the unsplit selection; eagerly, n == 1 takes the unsplit path (reductions over no rows fail)
    if variant == "openvino" and split and (not isinstance(n, int) or n > 1):
        half, first = n // 2, keep // 2
        low = greedy_map_rows(conditional_kernel(image[:, :half], *args), keep_rows[:first])
        high = greedy_map_rows(conditional_kernel(image[:, half:], *args), keep_rows[first:])
        order = torch.cat([low, high + half], dim=1)
    else:
        order = greedy_map_rows(conditional_kernel(image, *args), keep_rows)
    return torch.topk(order, keep, dim=-1, largest=False, sorted=True).values


__all__ = [
    "CDPRUNER_PARAMS",
    "VARIANTS",
    "cdpruner_select",
    "cdpruner_select_any_length",
    "check_cdpruner_args",
    "conditional_kernel",
    "greedy_map",
    "greedy_map_rows",
    "openvino_relevance",
    "paper_relevance",
]
