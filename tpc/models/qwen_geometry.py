"""Qwen2-VL / Qwen2.5-VL geometry, torch-free: image grids, vision tables and 3-D M-RoPE positions.

Pure functions (numpy only) that reproduce transformers 5's Qwen2-VL/Qwen2.5-VL arithmetic, so the
compiler and the runtime agree with Hugging Face without importing it.

Conventions: sizes are ``(height, width)`` in pixels; a *grid* is ``(grid_h, grid_w)`` in patches
(``patch_size`` px each, 14 for the released checkpoints; still images, t = 1); the vision tower sees
``grid_h * grid_w`` patches and the LLM ``grid_h * grid_w / merge**2`` merged tokens (``merge`` =
``spatial_merge_size``, 2). *Processor order* is the order of the image processor's flattened patches:
merge units in the raster order of the merged grid, the ``merge x merge`` patches of a unit consecutive
(row-major). The compiled ViT runs in processor order; HF's window order is never materialised.

- Grids: ``smart_resize``, ``image_grid``, ``grid_pixels``, ``grids_for_sizes``, ``default_grids``,
  ``nearest_grid``.
- Vision tables (per patch, processor order): ``vision_positions`` (2-D rotary ids), ``window_ids``
  (window attention = attend iff same id).
- LLM positions: ``merged_positions`` (one image), ``mrope_positions`` (a left-padded batch, optionally
  pruned: kept tokens keep their unpruned positions), ``decode_start`` (first generated token).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

Grid = tuple[int, int]
MIN_PIXELS = 56 * 56
MAX_PIXELS = 14 * 14 * 4 * 1280  # the image processor's defaults (shortest_edge / longest_edge)
# (h, w) of the default shapes: square, 4:3, 3:4, 16:9, 9:16 (ratios named width:height)
DEFAULT_ASPECTS = ((1, 1), (3, 4), (4, 3), (9, 16), (16, 9))


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> tuple[int, int]:
    """The size Qwen2-VL's image processor resizes an image of ``height x width`` to (``smart_resize``).

    Both sides become multiples of ``factor`` (patch * merge), the area lands in ``[min_pixels,
    max_pixels]`` and the aspect ratio stays as close as it can. ValueError past an aspect ratio of 200.
    """
    if min(height, width) < 1:
        raise ValueError(f"image size {(height, width)}: both sides must be at least 1")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def image_grid(
    height: int,
    width: int,
    patch_size: int = 14,
    merge: int = 2,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> Grid:
    """The processor's patch grid for a ``height x width`` image (``image_grid_thw[1:]``)."""
    h, w = smart_resize(height, width, patch_size * merge, min_pixels, max_pixels)
    return h // patch_size, w // patch_size


def grid_pixels(grid: Sequence[int], patch_size: int = 14) -> tuple[int, int]:
    """The ``(height, width)`` in pixels an image of patch grid ``grid`` is resized to."""
    return int(grid[0]) * patch_size, int(grid[1]) * patch_size


def _merged_shape(grid: Sequence[int], merge: int) -> tuple[int, int]:
    gh, gw = int(grid[0]), int(grid[1])
    if gh < merge or gw < merge or gh % merge or gw % merge:
        raise ValueError(f"grid {(gh, gw)}: both sides must be positive multiples of merge={merge}")
    return gh // merge, gw // merge


def vision_positions(grid: Sequence[int], merge: int = 2) -> np.ndarray:
    """``[L, 2]`` int64 ``(h, w)`` patch coordinates in processor order (HF ``get_vision_position_ids``)."""
    lh, lw = _merged_shape(grid, merge)
    hh, ww = np.meshgrid(np.arange(lh * merge), np.arange(lw * merge), indexing="ij")
    # (row unit, row in unit, col unit, col in unit) -> units in raster order, then row-major inside
    blocks = [a.reshape(lh, merge, lw, merge).transpose(0, 2, 1, 3).reshape(-1) for a in (hh, ww)]
    return np.stack(blocks, axis=-1).astype(np.int64)


def window_ids(grid: Sequence[int], merge: int = 2, window_size: int = 112, patch_size: int = 14) -> np.ndarray:
    """``[L]`` int64: for each patch in processor order, the index of its attention window.

    HF (``get_vision_window_index``) tiles the merged grid with ``w x w`` merge-unit windows, ``w =
    window_size // merge // patch_size`` (4 for the released configs), ragged at the bottom and right
    edges, and numbers the non-empty windows row-major; the ids here are those numbers. Patches attend
    to each other in a window block iff their ids are equal. Inside a window HF keeps the units in
    raster order, so ``np.argsort(window_ids(...), kind="stable")`` is HF's patch permutation.
    """
    lh, lw = _merged_shape(grid, merge)
    w = window_size // merge // patch_size
    if w < 1:
        raise ValueError(f"window_size={window_size} is smaller than one merge unit ({merge * patch_size} px)")
    rows, cols = np.divmod(np.arange(lh * lw), lw)  # merge units in raster order
    unit_window = (rows // w) * -(-lw // w) + cols // w
    return np.repeat(unit_window, merge * merge).astype(np.int64)


def merged_positions(grid: Sequence[int], merge: int = 2, start: int = 0) -> np.ndarray:
    """``[M, 3]`` int64 ``(t, h, w)`` M-RoPE positions of one image's merged tokens, raster order.

    t = start; h = start + row; w = start + column (HF ``get_vision_position_ids(start, [1, gh, gw],
    1, merge)``, transposed). The running position after the image is ``start + max(lh, lw)``.
    """
    lh, lw = _merged_shape(grid, merge)
    hh, ww = np.meshgrid(np.arange(lh), np.arange(lw), indexing="ij")
    return np.stack([np.zeros(lh * lw, np.int64), hh.reshape(-1), ww.reshape(-1)], axis=-1) + np.int64(start)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` of each maximal run of True in a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def _text_positions(start: int, n: int) -> np.ndarray:
    return np.repeat(np.arange(start, start + n, dtype=np.int64)[:, None], 3, axis=1)


def mrope_positions(
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None,
    image_token_id: int,
    grids: Sequence[Sequence[Sequence[int]]],
    merge: int = 2,
    kept: Sequence[Sequence[np.ndarray | None] | None] | None = None,
) -> np.ndarray:
    """``[B, S, 3]`` int64 M-RoPE positions ``(t, h, w)`` of a (left-)padded batch, pruned or not.

    ``grids[b]`` lists the grids of sample b's images in prompt order; each image is one contiguous
    run of ``image_token_id`` in ``input_ids``. ``kept[b][i]`` (None = unpruned) is the array
    of the merged-token indices (raster order) kept from image i, in the order its rows appear (ascending
    for top-k methods; VisionZip's contextual tokens follow its dominant ones); its run then holds
    ``len(kept)`` tokens. Positions are those of the UNPRUNED sequence (HF ``get_rope_index``): text advances the
    running position by 1 per token, an image starting at p gets ``merged_positions(grid, start=p)``
    and advances it by ``max(lh, lw)``; kept tokens take their unpruned positions and later text
    keeps its unpruned positions. Padding (mask 0) gets 0; a text-only sample gets
    ``cumsum(mask) - 1`` on all three axes.
    """
    input_ids = np.asarray(input_ids)
    mask = np.ones(input_ids.shape, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    if input_ids.ndim != 2 or mask.shape != input_ids.shape:
        raise ValueError(f"input_ids {input_ids.shape} and attention_mask {mask.shape} must both be [B, S]")
    if len(grids) != len(input_ids):
        raise ValueError(f"grids has {len(grids)} entries for a batch of {len(input_ids)}")
    if kept is not None and len(kept) != len(input_ids):
        raise ValueError(f"kept has {len(kept)} entries for a batch of {len(input_ids)}")
    out = np.zeros((*input_ids.shape, 3), np.int64)
    for b, (ids, valid) in enumerate(zip(input_ids, mask, strict=True)):
        ids = ids[valid]
        runs = _runs(ids == image_token_id)
        sample_grids = list(grids[b])
        sample_kept = [None] * len(sample_grids) if kept is None or kept[b] is None else list(kept[b])
        if len(runs) != len(sample_grids):
            raise ValueError(f"sample {b}: {len(runs)} image-token runs but {len(sample_grids)} grids")
        if len(sample_kept) != len(sample_grids):
            raise ValueError(f"sample {b}: kept lists {len(sample_kept)} images but grids {len(sample_grids)}")
        pieces, pos, prev = [], 0, 0
        for i, ((start, end), grid, keep) in enumerate(zip(runs, sample_grids, sample_kept, strict=True)):
            pieces.append(_text_positions(pos, start - prev))
            pos += start - prev
            full = merged_positions(grid, merge, start=pos)
            if keep is not None:
                keep = np.asarray(keep, dtype=np.int64).reshape(-1)
                if keep.size and (keep.min() < 0 or keep.max() >= len(full) or len(np.unique(keep)) != keep.size):
                    raise ValueError(f"sample {b} image {i}: kept must be unique indices in [0, {len(full)})")
                full = full[keep]
            if end - start != len(full):
                raise ValueError(
                    f"sample {b} image {i}: run of {end - start} image tokens, expected {len(full)} "
                    f"(grid {tuple(grid)}{', pruned' if keep is not None else ''})"
                )
            pieces.append(full)
            pos += max(_merged_shape(grid, merge))
            prev = end
        pieces.append(_text_positions(pos, len(ids) - prev))
        out[b, valid] = np.concatenate(pieces)
    return out


def decode_start(positions: np.ndarray, attention_mask: np.ndarray | None) -> np.ndarray:
    """``[B, 1, 3]`` int64 position of the first generated token: max over the prompt's positions + 1.

    Same on t/h/w; this is HF's ``cache_position``-based ``cumsum(mask) - 1 + rope_deltas`` for the new
    token (``rope_deltas = max + 1 - prompt length``), and later tokens add 1 each. For a pruned prompt
    it equals the unpruned value whenever a text token follows the last image (chat templates put
    ``<|vision_end|>`` there), since that token carries the prompt's largest position.
    """
    positions = np.asarray(positions)
    mask = np.ones(positions.shape[:2], bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    top = np.where(mask[..., None], positions, -1).reshape(len(positions), -1).max(axis=1, initial=-1)
    return np.repeat((top + 1)[:, None, None], 3, axis=2).astype(np.int64)


def nearest_grid(grid: Sequence[int], compiled: Sequence[Sequence[int]]) -> Grid:
    """The compiled grid to resize an image of processor grid ``grid`` to (``grid`` itself if compiled).

    Closest aspect ratio (smallest ``|log(gh/gw) - log(ch/cw)|``, compared exactly), then closest patch
    count (smallest ``|gh*gw - ch*cw|``), then the first in ``compiled``. ValueError if none.
    """
    gh, gw = int(grid[0]), int(grid[1])
    options = [(int(c[0]), int(c[1])) for c in compiled]
    if not options:
        raise ValueError("no compiled grids to choose from")
    if (gh, gw) in options:
        return gh, gw

    def key(c: Grid) -> tuple[Fraction, int]:
        a, b = gh * c[1], c[0] * gw  # |log(a / b)| is monotone in max(a, b) / min(a, b)
        return Fraction(max(a, b), min(a, b)), abs(gh * gw - c[0] * c[1])

    return min(options, key=key)  # min keeps the first of equal keys


def grids_for_sizes(
    sizes: Sequence[Sequence[int]],
    patch_size: int = 14,
    merge: int = 2,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> list[Grid]:
    """The distinct processor grids of images of the given ``(height, width)`` sizes, first-seen order."""
    grids = (image_grid(int(h), int(w), patch_size, merge, min_pixels, max_pixels) for h, w in sizes)
    return list(dict.fromkeys(grids))


def default_grids(min_pixels: int, max_pixels: int, patch_size: int = 14, merge: int = 2) -> list[Grid]:
    """Grids to compile when only a pixel range is given: the largest the processor makes per common shape.

    Rule: for each shape in square, 4:3, 3:4, 16:9, 9:16 (width:height; ``DEFAULT_ASPECTS`` as (h, w)),
    the processor grid of an ``h*s x w*s`` image with ``s`` large enough that its area is at least 4x
    ``max_pixels``; ``smart_resize`` shrinks such an image to the largest multiple-of-``patch*merge``
    size of that ratio within ``max_pixels``. Duplicates dropped, order kept.
    """
    sizes = []
    for ah, aw in DEFAULT_ASPECTS:
        s = math.isqrt(4 * max_pixels // (ah * aw)) + 1
        sizes.append((ah * s, aw * s))
    return grids_for_sizes(sizes, patch_size, merge, min_pixels, max_pixels)
