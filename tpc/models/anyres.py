"""LLaVA-NeXT ("anyres") geometry, torch-free: which crops an image becomes and how its tokens are packed.

Pure functions (numpy only) that reproduce transformers 5's LLaVA-NeXT arithmetic bit for bit,
so the compiler and the runtime agree with Hugging Face without importing it:

* ``select_best_resolution``: the pinpoint an image is resized and padded to
  (``image_processing_utils.select_best_resolution``, same tie rule: the first pinpoint with the
  largest effective resolution and, among equals, the least waste);
* ``patch_output_size``: the size the image is resized to inside that pinpoint before the zero
  padding (``get_patch_output_size``);
* ``grid_shape`` and ``num_crops``: the grid of sub-crops (``get_anyres_image_grid_shape``) and
  the crop count with the base crop (``image_size_to_num_patches``);
* ``unpad_bounds``: the rows and columns of the merged token grid ``unpad_image`` keeps;
* ``image_token_count`` (the processor's ``<image>`` placeholders,
  ``LlavaNextProcessor._get_number_of_features``) and ``model_token_count`` (the rows
  ``pack_image_features`` produces);
* ``packed_index``: ``pack_image_features``' row order as one gather index into the flattened
  per-crop features, ``-1`` where ``image_newline`` goes.

LLaVA-OneVision packs the same way, with one more step (its ``vision_aspect_ratio``
``"anyres_max_N"``): when the unpadded grid holds more than about ``N`` crops' worth of tokens it is
downsampled by bilinear interpolation before the newlines are appended:

* ``max_crops_of``: ``N`` from ``"anyres_max_N"``;
* ``downsampled_shape``: the grid ``pack_image_features`` interpolates to (None when it does not);
* ``bilinear_resize``: ``torch.nn.functional.interpolate(..., mode="bilinear")`` (``align_corners``
  False, no antialiasing) in numpy float32, the same source indices and weights as PyTorch's CPU
  kernel (which computes the source coordinate with one fused multiply-add); results agree to
  float32 rounding (a couple of ulp: PyTorch's own kernels sum the four terms in different orders);
* ``onevision_token_count`` (the rows ``pack_image_features`` produces, which is also the
  ``<image>`` placeholders ``LlavaOnevisionProcessor`` writes) and ``onevision_packed_rows``
  (the packed rows themselves, from the per-crop features).

Conventions: image sizes are ``(height, width)`` of the ORIGINAL image (``image_sizes`` in
Hugging Face); ``crop_size`` is the vision tower's input side (336); ``tokens_per_side`` the
patch tokens per crop side (336 // 14 = 24). Crop 0 is the base crop (the whole image resized
to the crop size); crops ``1 + i * grid_w + j`` are the sub-crops in raster order (row ``i``,
column ``j``), as ``divide_to_patches`` cuts them.

Where the processor and the model disagree in Hugging Face (only outside the configurations
tpc accepts), the functions follow each side and say so:

* pinpoints that are not multiples of the crop size: the image processor cuts ``ceil`` crops
  per side (``num_crops``), the model's grid is ``floor`` (``grid_shape``) and its ``view``
  fails; ``check_pinpoints`` refuses them;
* ``num_additional_image_tokens=0`` with the ``"default"`` strategy: the processor counts one
  placeholder fewer than the model produces (``image_token_count`` takes both settings; the
  model side is always ``tokens_per_side ** 2`` base rows).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

Pinpoints = Sequence[Sequence[int]]

__all__ = [
    "bilinear_resize",
    "check_pinpoints",
    "downsampled_shape",
    "grid_shape",
    "image_token_count",
    "max_crops_of",
    "model_token_count",
    "num_crops",
    "onevision_packed_rows",
    "onevision_token_count",
    "packed_index",
    "padding",
    "patch_output_size",
    "select_best_resolution",
    "unpad_bounds",
]


def _hw(image_hw) -> tuple[int, int]:
    height, width = (int(v) for v in (image_hw.tolist() if hasattr(image_hw, "tolist") else image_hw))
    if height < 1 or width < 1:
        raise ValueError(f"image size {(height, width)}: both sides must be at least 1")
    return height, width


def check_pinpoints(pinpoints: Pinpoints, crop_size: int) -> list[list[int]]:
    """The pinpoints as ``[[h, w], ...]``; ValueError unless each is a positive multiple of ``crop_size``."""
    result = [[int(h), int(w)] for h, w in pinpoints]
    if not result:
        raise ValueError("no image_grid_pinpoints")
    bad = [p for p in result if p[0] < crop_size or p[1] < crop_size or p[0] % crop_size or p[1] % crop_size]
    if bad:
        raise ValueError(f"image_grid_pinpoints {bad} are not multiples of the crop size {crop_size}")
    return result


def select_best_resolution(image_hw, pinpoints: Pinpoints) -> tuple[int, int]:
    """The pinpoint ``(h, w)`` transformers' ``select_best_resolution`` picks for an image of ``image_hw``."""
    original_height, original_width = _hw(image_hw)
    best_fit = None
    max_effective_resolution = 0
    min_wasted_resolution = float("inf")
    for height, width in pinpoints:
        scale = min(width / original_width, height / original_height)
        downscaled_width, downscaled_height = int(original_width * scale), int(original_height * scale)
        effective_resolution = min(downscaled_width * downscaled_height, original_width * original_height)
        wasted_resolution = (width * height) - effective_resolution
        if effective_resolution > max_effective_resolution or (
            effective_resolution == max_effective_resolution and wasted_resolution < min_wasted_resolution
        ):
            max_effective_resolution = effective_resolution
            min_wasted_resolution = wasted_resolution
            best_fit = (int(height), int(width))
    if best_fit is None:
        raise ValueError(f"no pinpoint fits an image of {original_height}x{original_width} ({list(pinpoints)})")
    return best_fit


def patch_output_size(image_hw, target_hw) -> tuple[int, int]:
    """``get_patch_output_size``: the image resized to fit ``target_hw`` keeping its aspect ratio (ceil)."""
    original_height, original_width = _hw(image_hw)
    target_height, target_width = (int(v) for v in target_hw)
    scale_w = target_width / original_width
    scale_h = target_height / original_height
    if scale_w < scale_h:
        return min(math.ceil(original_height * scale_w), target_height), target_width
    return target_height, min(math.ceil(original_width * scale_h), target_width)


def padding(resized_hw, target_hw) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((top, bottom), (left, right))`` zero padding that centres ``resized_hw`` in ``target_hw``."""
    paste_y, r_y = divmod(int(target_hw[0]) - int(resized_hw[0]), 2)
    paste_x, r_x = divmod(int(target_hw[1]) - int(resized_hw[1]), 2)
    return (paste_y, paste_y + r_y), (paste_x, paste_x + r_x)


def grid_shape(image_hw, pinpoints: Pinpoints, crop_size: int) -> tuple[int, int]:
    """``(grid_h, grid_w)`` sub-crops (``get_anyres_image_grid_shape``); the image has ``1 + grid_h * grid_w`` crops."""
    height, width = select_best_resolution(image_hw, pinpoints)
    return height // crop_size, width // crop_size


def num_crops(image_hw, pinpoints: Pinpoints, crop_size: int) -> int:
    """Crops the image processor makes, the base crop included (``image_size_to_num_patches``: ceil per side)."""
    height, width = select_best_resolution(image_hw, pinpoints)
    return -(-height // crop_size) * -(-width // crop_size) + 1


def unpad_bounds(image_hw, grid_h: int, grid_w: int, tokens_per_side: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)``: the rows ``top:bottom`` and columns ``left:right`` of the merged
    ``grid_h * tokens_per_side`` x ``grid_w * tokens_per_side`` token grid that ``unpad_image`` keeps
    (computed from the ORIGINAL image size, with its ``int(round(x, 7))``)."""
    original_height, original_width = _hw(image_hw)
    current_height, current_width = grid_h * tokens_per_side, grid_w * tokens_per_side
    original_aspect_ratio = original_width / original_height
    current_aspect_ratio = current_width / current_height
    if original_aspect_ratio > current_aspect_ratio:
        scale_factor = current_width / original_width
        new_height = int(round(original_height * scale_factor, 7))
        pad = (current_height - new_height) // 2
        return pad, current_height - pad, 0, current_width
    scale_factor = current_height / original_height
    new_width = int(round(original_width * scale_factor, 7))
    pad = (current_width - new_width) // 2
    return 0, current_height, pad, current_width - pad


def image_token_count(
    image_hw,
    pinpoints: Pinpoints,
    crop_size: int,
    tokens_per_side: int,
    newline: bool = True,
    *,
    num_additional_image_tokens: int = 1,
    vision_feature_select_strategy: str = "default",
) -> int:
    """The ``<image>`` placeholders ``LlavaNextProcessor`` writes for this image (its own arithmetic:
    ``_get_number_of_features`` then ``-1`` for the ``"default"`` strategy). ``newline=False`` leaves out
    the one ``image_newline`` per kept row, which the processor always counts."""
    orig_height, orig_width = _hw(image_hw)
    best_height, best_width = select_best_resolution((orig_height, orig_width), pinpoints)
    scale_height, scale_width = best_height // crop_size, best_width // crop_size
    patches_height = patches_width = tokens_per_side
    current_height = patches_height * scale_height
    current_width = patches_width * scale_width
    original_aspect_ratio = orig_width / orig_height
    current_aspect_ratio = current_width / current_height
    if original_aspect_ratio > current_aspect_ratio:
        new_height = int(round(orig_height * (current_width / orig_width), 7))
        current_height -= (current_height - new_height) // 2 * 2
    else:
        new_width = int(round(orig_width * (current_height / orig_height), 7))
        current_width -= (current_width - new_width) // 2 * 2
    unpadded = current_height * current_width
    newlines = current_height if newline else 0
    count = unpadded + newlines + patches_height * patches_width + num_additional_image_tokens
    if vision_feature_select_strategy == "default":
        count -= 1
    return count


def model_token_count(image_hw, pinpoints: Pinpoints, crop_size: int, tokens_per_side: int, newline: bool = True):
    """The rows ``pack_image_features`` produces for this image (``"default"`` strategy: no [CLS] rows)."""
    grid_h, grid_w = grid_shape(image_hw, pinpoints, crop_size)
    top, bottom, left, right = unpad_bounds(image_hw, grid_h, grid_w, tokens_per_side)
    rows = bottom - top
    return tokens_per_side**2 + rows * (right - left) + (rows if newline else 0)


def packed_index(
    image_hw, pinpoints: Pinpoints, crop_size: int, tokens_per_side: int, newline: bool = True
) -> np.ndarray:
    """``pack_image_features``' rows for one image as indices into its flattened per-crop features.

    The features are ``[(1 + grid_h * grid_w) * tokens_per_side ** 2, D]`` (crop ``c``'s token
    ``(y, x)`` at row ``c * t * t + y * t + x``, crop 0 the base); the result (int64) is the base
    crop's rows, then the unpadded merged grid row by row, each row followed by ``-1`` where
    ``image_newline`` goes (none with ``newline=False``). ``features[index]`` with the ``-1`` rows
    replaced by the newline vector is Hugging Face's packed sequence for this image.
    """
    t = int(tokens_per_side)
    grid_h, grid_w = grid_shape(image_hw, pinpoints, crop_size)
    top, bottom, left, right = unpad_bounds(image_hw, grid_h, grid_w, t)
    rows = np.arange(top, bottom)
    cols = np.arange(left, right)
    crop = 1 + (rows[:, None] // t) * grid_w + cols[None, :] // t
    grid = crop * (t * t) + (rows[:, None] % t) * t + cols[None, :] % t
    if newline:
        grid = np.concatenate([grid, np.full((len(rows), 1), -1, dtype=grid.dtype)], axis=1)
    return np.concatenate([np.arange(t * t), grid.reshape(-1)]).astype(np.int64)


# --------------------------------------------------------------------------- LLaVA-OneVision

_ANYRES_MAX = re.compile(r"^anyres_max_(\d+)$")


def max_crops_of(vision_aspect_ratio: str) -> int:
    """``N`` of LLaVA-OneVision's ``vision_aspect_ratio`` ``"anyres_max_N"``; ValueError for anything else
    (transformers parses it with ``int(value.strip("anyres_max_"))``, which fails on other values too)."""
    match = _ANYRES_MAX.match(str(vision_aspect_ratio))
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"vision_aspect_ratio {vision_aspect_ratio!r} is not 'anyres_max_N' with N >= 1")
    return int(match.group(1))


def downsampled_shape(rows: int, cols: int, tokens_per_side: int, max_crops: int) -> tuple[int, int] | None:
    """The ``(rows, cols)`` an unpadded ``rows x cols`` token grid is interpolated to, or None when it is kept.

    ``pack_image_features``: ``ratio = sqrt(rows * cols / (max_crops * tokens_per_side ** 2))``; above 1.1
    the grid becomes ``int(rows // ratio) x int(cols // ratio)``.
    """
    ratio = math.sqrt(rows * cols / (max_crops * tokens_per_side**2))
    if ratio > 1.1:
        return int(rows // ratio), int(cols // ratio)
    return None


def _bilinear_axis(size_in: int, size_out: int):
    """Source indices and weights along one axis, as PyTorch's CPU bilinear kernel computes them (float32)."""
    scale = np.float64(np.float32(size_in) / np.float32(size_out))
    # scale * (dst + 0.5) - 0.5 with a single rounding to float32 (the kernel's fused multiply-add; the
    # float64 arithmetic is exact here)
    real = (scale * (np.arange(size_out, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    real = np.maximum(real, np.float32(0))
    low = np.minimum(np.floor(real).astype(np.int64), size_in - 1)
    high_weight = np.clip(real - low.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    high = low + (low < size_in - 1)
    return low, high, (np.float32(1) - high_weight).astype(np.float32), high_weight


def bilinear_resize(grid: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """``grid`` [H, W, D] float32 resized to ``out_hw`` like ``F.interpolate(mode="bilinear")`` on [1, D, H, W]."""
    grid = np.asarray(grid, dtype=np.float32)
    top, bottom, w_top, w_bottom = _bilinear_axis(grid.shape[0], int(out_hw[0]))
    left, right, w_left, w_right = _bilinear_axis(grid.shape[1], int(out_hw[1]))
    w_top, w_bottom = w_top[:, None, None], w_bottom[:, None, None]
    w_left, w_right = w_left[None, :, None], w_right[None, :, None]
    upper, lower = grid[top], grid[bottom]
    return (
        (w_top * w_left) * upper[:, left]
        + (w_top * w_right) * upper[:, right]
        + (w_bottom * w_left) * lower[:, left]
        + (w_bottom * w_right) * lower[:, right]
    ).astype(np.float32)


def _onevision_grid(image_hw, pinpoints: Pinpoints, crop_size: int, tokens_per_side: int, max_crops: int):
    grid_h, grid_w = grid_shape(image_hw, pinpoints, crop_size)
    top, bottom, left, right = unpad_bounds(image_hw, grid_h, grid_w, tokens_per_side)
    rows, cols = bottom - top, right - left
    return rows, cols, downsampled_shape(rows, cols, tokens_per_side, max_crops)


def onevision_token_count(
    image_hw, pinpoints: Pinpoints, crop_size: int, tokens_per_side: int, max_crops: int, newline: bool = True
) -> int:
    """Rows of LLaVA-OneVision's ``pack_image_features`` for one image (``"full"`` strategy: every patch token):
    the base crop, then the unpadded (and possibly downsampled) grid with one newline per row. It equals the
    ``<image>`` placeholders ``LlavaOnevisionProcessor._get_number_of_features`` counts."""
    rows, cols, shape = _onevision_grid(image_hw, pinpoints, crop_size, tokens_per_side, max_crops)
    if shape is not None:
        rows, cols = shape
    return tokens_per_side**2 + rows * cols + (rows if newline else 0)


def onevision_packed_rows(
    features: np.ndarray,
    image_hw,
    pinpoints: Pinpoints,
    crop_size: int,
    tokens_per_side: int,
    max_crops: int,
    newline: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """LLaVA-OneVision's packed rows of one image from its per-crop features ``[(1 + gh * gw) * t * t, D]``.

    Returns ``(rows [n, D], labels [n])``: labels are the source row of each packed row (crop * t * t +
    patch), ``-1`` for a newline row and for a row interpolated from several patches.
    """
    t = int(tokens_per_side)
    order = packed_index(image_hw, pinpoints, crop_size, t, newline=False)
    rows, cols, shape = _onevision_grid(image_hw, pinpoints, crop_size, t, max_crops)
    flat = np.asarray(features, dtype=np.float32)
    base, grid_index = order[: t * t], order[t * t :].reshape(rows, cols)
    grid, labels = flat[grid_index], grid_index
    if shape is not None:
        grid = bilinear_resize(grid, shape)
        labels = np.full(shape, -1, dtype=np.int64)
    if newline is not None:
        column = np.broadcast_to(np.asarray(newline, dtype=np.float32), (grid.shape[0], 1, grid.shape[2]))
        grid = np.concatenate([grid, column], axis=1)
        labels = np.concatenate([labels, np.full((labels.shape[0], 1), -1, dtype=np.int64)], axis=1)
    packed = np.concatenate([flat[base], grid.reshape(-1, grid.shape[-1])])
    return packed, np.concatenate([base, labels.reshape(-1)]).astype(np.int64)
