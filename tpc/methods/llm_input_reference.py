"""Naive references of the LLM-input selections (DART, CDPruner), written apart from the kernels.

Per sample, in float64 numpy, straight from METHODS.md: DART as a Python loop over its
pivots with Python sorts keyed by (value, index); CDPruner as a greedy DPP that
recomputes ``det(K[S+i, S+i])`` from scratch for every candidate at every step. Ties go
to the lower index (Python's ``sorted`` on (value, index) keys; ``np.argmax`` returns the
first maximum). Both return kept indices [B,keep] int64, ascending.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _per_sample(image, text, text_mask):
    image = image.detach().to(torch.float64).cpu().numpy()
    text = text.detach().to(torch.float64).cpu().numpy()
    mask = (text_mask.detach().cpu().numpy() != 0).astype(bool)
    return zip(image, text, mask, strict=True)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-8)


@torch.no_grad()
def reference_dart(
    image, text, text_mask, keep: int, image_pivots: int = 4, text_pivots: int = 4, image_key=None, text_key=None
) -> torch.Tensor:
    """``image_key`` [B,n] / ``text_key`` [B,T]: what the pivots are picked by (largest first) in place of
    the rows' own L1 norms (DART inside the LLM: the L1 norms of a layer's keys)."""
    keys = [None] * len(image) if image_key is None else image_key.detach().to(torch.float64).cpu().numpy()
    text_keys = [None] * len(image) if text_key is None else text_key.detach().to(torch.float64).cpu().numpy()
    out = []
    for (img, txt, real), img_key, txt_key in zip(_per_sample(image, text, text_mask), keys, text_keys, strict=True):
        n = len(img)
        img_key = [np.abs(img[i]).sum() for i in range(n)] if img_key is None else img_key
        txt_key = [np.abs(txt[t]).sum() for t in range(len(txt))] if txt_key is None else txt_key
        by_l1 = sorted(range(n), key=lambda i: (-img_key[i], i))
        chosen = by_l1[: min(image_pivots, keep)]
        real_rows = [t for t in range(len(txt)) if real[t]]
        text_rows = sorted(real_rows, key=lambda t: (-txt_key[t], t))[:text_pivots]
        pivots = [img[i] for i in chosen] + [txt[t] for t in text_rows]
        pool = [i for i in range(n) if i not in chosen]
        remaining = keep - len(chosen)
        for number, pivot in enumerate(pivots):
            per = math.ceil(remaining / (len(pivots) - number))
            ranked = sorted(pool, key=lambda c, p=pivot: (_cosine(p, img[c]), c))
            chosen += ranked[:per]
            pool = [c for c in pool if c not in ranked[:per]]
            remaining -= per
        assert len(chosen) == keep, "every pivot takes from a pool that is never short"
        out.append(sorted(chosen))
    return torch.tensor(out, dtype=torch.int64)


def _relevance_paper(img: np.ndarray, txt: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Cosine with the mean real text row, min-max over the span (all equal: 1 everywhere)."""
    mean = txt[real].mean(axis=0) if real.any() else np.zeros(img.shape[1])
    cos = np.array([_cosine(row, mean) for row in img])
    low, high = cos.min(), cos.max()
    return (cos - low) / (high - low) if high > low else np.ones_like(cos)


def _relevance_openvino(img: np.ndarray, txt: np.ndarray, real: np.ndarray, eps: float) -> np.ndarray:
    """OpenVINO GenAI's: mean over the real text rows of the cosine with each, then min-max + eps."""
    unit_img = img / np.sqrt((img**2).sum(axis=1, keepdims=True) + eps)
    rows = txt[real]
    if len(rows):
        unit_txt = rows / np.sqrt((rows**2).sum(axis=1, keepdims=True) + eps)
        score = (unit_img @ unit_txt.T).mean(axis=1)
    else:
        score = np.zeros(len(img))
    return (score - score.min()) / (score.max() - score.min() + eps)


def _kernel(img, txt, real, variant: str, relevance_weight: float, eps: float) -> np.ndarray:
    if variant == "paper":
        norms = np.linalg.norm(img, axis=1)
        unit = img / np.maximum(norms, 1e-12)[:, None]
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, (norms > 0).astype(np.float64))  # a unit row's cosine with itself
        r = _relevance_paper(img, txt, real)
        return r[:, None] * similarity * r[None, :]
    unit = img / np.sqrt((img**2).sum(axis=1, keepdims=True) + eps)
    similarity = unit @ unit.T
    r = _relevance_openvino(img, txt, real, eps)
    return (1.0 - relevance_weight) * similarity + relevance_weight * (r[:, None] * similarity * r[None, :])


def naive_greedy_dpp(kernel: np.ndarray, keep: int) -> list[int]:
    """Greedy MAP: each step adds the candidate with the largest det(K[S+i, S+i]), first on ties."""
    chosen: list[int] = []
    for _ in range(keep):
        gains = np.full(len(kernel), -np.inf)
        for i in range(len(kernel)):
            if i not in chosen:
                rows = [*chosen, i]
                gains[i] = np.linalg.det(kernel[np.ix_(rows, rows)])
        chosen.append(int(np.argmax(gains)))
    return chosen


@torch.no_grad()
def reference_cdpruner(
    image,
    text,
    text_mask,
    keep: int,
    variant: str = "paper",
    relevance_weight: float = 0.5,
    split: int = 1,
    eps: float = 1e-6,
) -> torch.Tensor:
    """``split`` (openvino only): the span's two halves are pruned apart, keep//2 from the first."""
    out = []
    for img, txt, real in _per_sample(image, text, text_mask):
        n = len(img)
        if variant == "openvino" and split and n > 1:
            parts = [(0, n // 2, keep // 2), (n // 2, n, keep - keep // 2)]
        else:
            parts = [(0, n, keep)]
        chosen = []
        for start, stop, count in parts:
            kernel = _kernel(img[start:stop], txt, real, variant, relevance_weight, eps)
            chosen += [start + i for i in naive_greedy_dpp(kernel, count)]
        out.append(sorted(chosen))
    return torch.tensor(out, dtype=torch.int64)


__all__ = ["naive_greedy_dpp", "reference_cdpruner", "reference_dart"]
