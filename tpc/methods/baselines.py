"""Baselines every paper compares to: uniform grid, average pooling, seeded random.

Their selections do not depend on the image, so the graph holds them as constants
(computed here at compile time from the grid shape and the budget).
"""

from __future__ import annotations

import math
import random

import torch

from tpc.errors import UsageError
from tpc.methods.base import SelectionMethod
from tpc.methods.params import PARAMS
from tpc.methods.selection import gather_tokens


def grid_shape(num_patches: int) -> tuple[int, int]:
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise UsageError(f"{num_patches} patches do not form a square grid")
    return side, side


def uniform_indices(num_patches: int, keep: int) -> list[int]:
    """``keep`` points of a rows x cols grid spread over the patch grid, in raster order.

    rows = round(sqrt(keep)), cols = ceil(keep / rows); point (i, j) sits at the centre
    of cell (i, j); the first ``keep`` points in raster order are kept.
    """
    height, width = grid_shape(num_patches)
    rows = max(1, round(math.sqrt(keep)))
    cols = math.ceil(keep / rows)
    points = [
        int((i + 0.5) * height / rows) * width + int((j + 0.5) * width / cols) for i in range(rows) for j in range(cols)
    ]
    return sorted(points[:keep])


def pool_windows(num_patches: int, keep: int) -> list[list[int]]:
    """Adaptive average-pooling windows (as torch's adaptive_avg_pool2d) of an s x s output."""
    height, width = grid_shape(num_patches)
    side = math.isqrt(keep)
    if side * side != keep:
        near = sorted({math.isqrt(keep) ** 2, (math.isqrt(keep) + 1) ** 2})
        raise UsageError(f"pool needs a square number of kept tokens (e.g. {' or '.join(map(str, near))}), got {keep}")
    windows = []
    for i in range(side):
        r0, r1 = (i * height) // side, -(-((i + 1) * height) // side)
        for j in range(side):
            c0, c1 = (j * width) // side, -(-((j + 1) * width) // side)
            windows.append([r * width + c for r in range(r0, r1) for c in range(c0, c1)])
    return windows


def random_indices(num_patches: int, keep: int, seed: int) -> list[int]:
    """Pure Python (not torch RNG): it runs while graphs are traced, where torch ops would be recorded."""
    return sorted(random.Random(seed).sample(range(num_patches), keep))


def _constant_rows(values, patches, indices: list[int]):
    """[B, K] int64 rows holding ``indices`` for every sample.

    ``values["constant"]`` turns a list into a tensor: a real tensor eagerly, a graph
    constant when the method is being recorded into a graph.
    """
    row = values["constant"](indices)
    return torch.zeros_like(patches[:, : len(indices), 0], dtype=torch.int64) + row


def _num_patches(values) -> int:
    rows, cols = values["grid"]
    return rows * cols


def uniform_select(values, keep: int):
    patches = values["patches"]
    kept = _constant_rows(values, patches, uniform_indices(_num_patches(values), keep))
    return kept, gather_tokens(patches, kept)


def random_select(values, keep: int, seed: int = 0):
    patches = values["patches"]
    kept = _constant_rows(values, patches, random_indices(_num_patches(values), keep, seed))
    return kept, gather_tokens(patches, kept)


def pool_select(values, keep: int):
    patches = values["patches"]
    rows, cols = values["grid"]
    windows = pool_windows(rows * cols, keep)
    grid = patches.reshape(-1, rows, cols, patches.shape[-1])
    pooled = torch.cat([_window_mean(grid, w, cols) for w in windows], dim=1)
    centres = [w[len(w) // 2] for w in windows]
    return _constant_rows(values, patches, centres), pooled


def _window_mean(grid, window: list[int], width: int):
    r0, c0 = divmod(window[0], width)
    r1, c1 = divmod(window[-1], width)
    return grid[:, r0 : r1 + 1, c0 : c1 + 1].mean(dim=(1, 2)).unsqueeze(1)


@torch.no_grad()
def _reference(indices_fn):
    def reference(adapter, pixel_values, keep: int, **params):
        patches = adapter.reference_vision(pixel_values)["patches"]
        indices = torch.tensor(indices_fn(patches.shape[1], keep, **params)).expand(patches.shape[0], -1)
        return indices, adapter.project(gather_tokens(patches, indices)), None

    return reference


@torch.no_grad()
def pool_reference(adapter, pixel_values, keep: int):
    patches = adapter.reference_vision(pixel_values)["patches"]
    side, width = math.isqrt(keep), math.isqrt(patches.shape[1])
    grid = patches.reshape(patches.shape[0], width, width, -1).permute(0, 3, 1, 2)
    pooled = torch.nn.functional.adaptive_avg_pool2d(grid, side).flatten(2).transpose(1, 2)
    centres = [w[len(w) // 2] for w in pool_windows(patches.shape[1], keep)]
    return torch.tensor(centres).expand(patches.shape[0], -1), adapter.project(pooled), None


UNIFORM = SelectionMethod(
    name="uniform",
    description="uniform grid sampling of the patch grid (baseline)",
    needs=(),
    select=uniform_select,
    reference=_reference(lambda n, k: uniform_indices(n, k)),
)
POOL = SelectionMethod(
    name="pool",
    description="average pooling of the patch grid to sqrt(K) x sqrt(K) (baseline; K square)",
    needs=(),
    select=pool_select,
    reference=pool_reference,
    extra={"validate_keep": lambda n, keep, params: pool_windows(n, keep)},
)
RANDOM = SelectionMethod(
    name="random",
    description="seeded random subset of patches, the same for every image (baseline)",
    needs=(),
    select=random_select,
    reference=_reference(lambda n, k, seed=0: random_indices(n, k, seed)),
    params=PARAMS["random"],
)
