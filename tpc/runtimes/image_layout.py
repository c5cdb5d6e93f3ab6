"""From pictures to crops, and from per-crop vision rows to each picture's token rows (torch-free).

The manifest's ``runtime.image_layout`` says how the model arranges a picture's visual
tokens; the vision graph always sees crops on its batch axis.

* ``single``: one crop per picture; its rows are the picture's tokens (LLaVA-1.5).
* ``anyres``: a base crop plus a grid of sub-crops (LLaVA-NeXT, LLaVA-OneVision). Unpruned, the
  rows are packed exactly as Hugging Face's ``pack_image_features`` packs them (base crop, merged
  grid unpadded to the picture's aspect ratio, for LLaVA-OneVision (``anyres_max`` in the layout)
  bilinearly downsampled when it holds more than ``anyres_max`` crops' worth of tokens,
  ``image_newline`` after every row); pruned, each crop keeps its own tokens: the base crop's
  first, then the sub-crops' in the raster order of the merged grid (METHODS.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Crops:
    """Preprocessed crops of a batch of pictures."""

    pixel_values: np.ndarray  # [C, 3, H, W], the crops of every picture in order
    per_image: list[int]  # crops of each picture
    image_sizes: list[tuple[int, int]]  # (height, width) of each picture


@dataclass
class Assembled:
    """Each picture's token rows, padded to the longest."""

    features: np.ndarray  # [B, max_n, D]
    counts: list[int]  # rows of each picture
    # [B, max_n] kept patch index per row (crop * N + patch; -1: newline, padding, or a row interpolated
    # from several patches)
    kept: np.ndarray | None


class SingleCropLayout:
    kind = "single"

    def __init__(self, runtime: dict, root: Path | None = None):
        self.num_patches = runtime["num_patches"]

    def crops(self, image_processor, images: Sequence[object], several: Sequence[bool] | None = None) -> Crops:
        pixels = np.asarray(image_processor(list(images), return_tensors="np")["pixel_values"], dtype=np.float32)
        return Crops(pixels, [1] * len(images), [picture_size(i) for i in images])

    def assemble(self, crops: Crops, features: np.ndarray, kept: np.ndarray, counts: Sequence[int]) -> Assembled:
        return Assembled(features, list(counts), kept)


class AnyResLayout:
    kind = "anyres"

    def __init__(self, runtime: dict, root: Path):
        layout = runtime["image_layout"]
        self.pinpoints = [tuple(p) for p in layout["pinpoints"]]
        self.crop_size = int(layout["crop_size"])
        self.side = int(layout["tokens_per_side"])
        self.num_patches = runtime["num_patches"]
        self.keep = runtime["keep"]
        self.newline = np.load(Path(root) / layout["newline"]).astype(np.float32)
        self.anyres_max = layout.get("anyres_max")  # LLaVA-OneVision's downsampling bound (None: LLaVA-NeXT)

    def crops(self, image_processor, images: Sequence[object], several: Sequence[bool] | None = None) -> Crops:
        """``several[i]``: picture i's prompt has several pictures; LLaVA-OneVision (``anyres_max``) then
        gives it one crop (padded to a square, resized: its multi-image mode), as transformers does."""
        several = list(several or [False] * len(images))
        if self.anyres_max is not None and any(several):
            return self._mixed_crops(image_processor, list(images), several)
        return self._anyres_crops(image_processor, images)

    def _mixed_crops(self, image_processor, images: list, several: list[bool]) -> Crops:
        """Anyres crops for the pictures alone in their prompt, one square crop for the others, in order."""
        alone = [i for i, s in zip(images, several, strict=True) if not s]
        base, base_sizes = _base_crops(image_processor, [i for i, s in zip(images, several, strict=True) if s])
        anyres = self._anyres_crops(image_processor, alone) if alone else None
        pieces, sizes, a, b = [], [], 0, 0
        for flag in several:
            if flag:
                pieces.append(np.asarray(base[b], dtype=np.float32))
                sizes.append(base_sizes[b])
                b += 1
            else:
                start = sum(anyres.per_image[:a])
                pieces.append(anyres.pixel_values[start : start + anyres.per_image[a]])
                sizes.append(anyres.image_sizes[a])
                a += 1
        return Crops(np.concatenate(pieces, axis=0), [len(p) for p in pieces], sizes)

    def _anyres_crops(self, image_processor, images: Sequence[object]) -> Crops:
        from tpc.models.anyres import grid_shape

        sizes = [picture_size(i) for i in images]
        if hasattr(image_processor, "preprocess_anyres"):
            per_image, sizes = image_processor.preprocess_anyres(list(images))
            per_image = [np.asarray(p, dtype=np.float32) for p in per_image]
        else:  # transformers' processor pads every picture to the batch's most crops
            out = image_processor(list(images), return_tensors="np")
            padded, sizes = np.asarray(out["pixel_values"], dtype=np.float32), [tuple(s) for s in out["image_sizes"]]
            per_image = []
            for row, size in enumerate(sizes):
                gh, gw = grid_shape(size, self.pinpoints, self.crop_size)
                per_image.append(padded[row, : 1 + gh * gw])
        sizes = [(int(h), int(w)) for h, w in sizes]
        return Crops(np.concatenate(per_image, axis=0), [len(p) for p in per_image], sizes)

    def assemble(self, crops: Crops, features: np.ndarray, kept: np.ndarray, counts: Sequence[int]) -> Assembled:
        from tpc.models.anyres import grid_shape, onevision_packed_rows, packed_index

        rows, kept_rows, start = [], [], 0
        dim = features.shape[-1]
        for n_crops, size in zip(crops.per_image, crops.image_sizes, strict=True):
            feats, idx = features[start : start + n_crops], kept[start : start + n_crops]
            n = counts[start : start + n_crops]
            start += n_crops
            if all(c == self.num_patches for c in n) and np.array_equal(
                idx, np.broadcast_to(np.arange(self.num_patches), idx.shape)
            ):  # unpruned: Hugging Face's packing
                if n_crops == 1:  # LLaVA-OneVision's multi-image mode: the one crop, then the newline
                    rows.append(np.concatenate([feats[0, : self.num_patches], self.newline[None, :]]))
                    kept_rows.append(np.r_[np.arange(self.num_patches), -1])
                    continue
                if self.anyres_max is not None:
                    packed, order = onevision_packed_rows(
                        feats.reshape(-1, dim),
                        size,
                        self.pinpoints,
                        self.crop_size,
                        self.side,
                        self.anyres_max,
                        self.newline,
                    )
                    rows.append(packed)
                    kept_rows.append(order)
                    continue
                order = packed_index(size, self.pinpoints, self.crop_size, self.side)
                flat = feats.reshape(-1, dim)
                picked = np.where((order >= 0)[:, None], flat[np.maximum(order, 0)], self.newline[None, :])
                rows.append(picked)
                kept_rows.append(order)
                continue
            gh, gw = grid_shape(size, self.pinpoints, self.crop_size)
            parts, keys, labels = [], [], []
            for crop in range(n_crops):
                patch = idx[crop, : n[crop]].astype(np.int64)
                parts.append(feats[crop, : n[crop]])
                labels.append(crop * self.num_patches + patch)
                if crop == 0:  # the base crop first, in its own (ascending) order
                    keys.append(np.arange(len(patch)) - self.num_patches * (1 + gh * gw) * self.side**2)
                    continue
                row, col = divmod(crop - 1, gw)
                y, x = patch // self.side + row * self.side, patch % self.side + col * self.side
                keys.append(y * (gw * self.side) + x)
            order = np.argsort(np.concatenate(keys), kind="stable")
            rows.append(np.concatenate(parts)[order])
            kept_rows.append(np.concatenate(labels)[order])
        longest = max(len(r) for r in rows)
        out = np.zeros((len(rows), longest, dim), dtype=np.float32)
        kept_out = np.full((len(rows), longest), -1, dtype=np.int64)
        for b, (r, k) in enumerate(zip(rows, kept_rows, strict=True)):
            out[b, : len(r)] = r
            kept_out[b, : len(k)] = k
        return Assembled(out, [len(r) for r in rows], kept_out)


def split_rows(pictures_per_sample: list[int], counts: Sequence[int]) -> list[list[int]]:
    """Each sample's pictures' row counts, from the flat per-picture counts."""
    out, start = [], 0
    for n in pictures_per_sample:
        out.append([int(c) for c in counts[start : start + n]])
        start += n
    return out


def per_sample(values, rows: list[list[int]], fill=0):
    """[B, max rows, ...]: each sample's pictures' rows one after another (``values``: [P, max_n, ...], one
    picture per row), padded with ``fill``; a sample without a picture is all padding."""
    longest = max(1, max(sum(r) for r in rows))
    out = np.full((len(rows), longest, *values.shape[2:]), fill, dtype=values.dtype)
    picture = 0
    for b, counts in enumerate(rows):
        at = 0
        for n in counts:
            out[b, at : at + n] = values[picture, :n]
            at, picture = at + n, picture + 1
    return out


def kept_per_picture(kept, rows: list[list[int]]) -> list[list]:
    """Per sample, per picture: the kept merged-token indices (the rows of ``kept``: one picture each)."""
    pictures = iter(range(len(kept)))
    return [[np.asarray(kept[next(pictures), :n], dtype=np.int64) for n in counts] for counts in rows]


def _base_crops(image_processor, images: list) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """One square crop per picture (LLaVA-OneVision's multi-image mode) and each picture's (height, width)."""
    if hasattr(image_processor, "preprocess_base"):
        return image_processor.preprocess_base(images)
    out = image_processor([images], do_pad=False, return_tensors=None)  # transformers: a nested list = one sample
    pixels = [np.asarray(p, dtype=np.float32) for p in out["pixel_values"]]
    return pixels, [(int(h), int(w)) for h, w in out["image_sizes"]]


def picture_size(image) -> tuple[int, int]:
    """(height, width) of a PIL image or an [H, W, ...] array."""
    size = getattr(image, "size", None)
    if isinstance(size, tuple) and len(size) == 2:  # PIL: (width, height)
        return int(size[1]), int(size[0])
    shape = np.asarray(image).shape
    return int(shape[0]), int(shape[1])
