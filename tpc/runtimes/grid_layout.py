"""Grid families (Qwen2.5-VL): pictures -> patches of a compiled grid -> each picture's token rows (torch-free).

The manifest's ``runtime.grid_vision`` lists the compiled grids (``vision_<h>x<w>`` graphs) and each
grid's kept-token count. A picture whose processor grid was compiled runs exactly as Hugging Face
preprocesses it; any other picture is first resized (PIL bicubic) to the pixel size of the NEAREST
compiled grid (closest aspect ratio, then closest patch count: ``qwen_geometry.nearest_grid``), and
``GridPicture.resized_to`` says so. Pictures of the same grid share one vision call; a batch of
several grids runs one call per grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tpc.artifact_layout import GRID_VISION_INPUT, grid_vision_name
from tpc.runtimes.image_layout import Assembled, picture_size


@dataclass
class GridPicture:
    size: tuple[int, int]  # (height, width) of the picture as given
    grid: tuple[int, int]  # the compiled grid it runs at (patches)
    processor_grid: tuple[int, int]  # the grid the processor would have picked for it
    resized_to: tuple[int, int] | None  # pixels it was resized to (None: its own grid was compiled)
    tokens: int = 0  # merged tokens of the grid (unpruned)
    kept: int = 0  # tokens the vision graph kept


@dataclass
class GridCrops:
    patches: list[np.ndarray]  # [L_i, P] per picture
    pictures: list[GridPicture]
    per_image: list[int] = field(default_factory=list)  # crops per picture (1 each), for reports

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        return [p.size for p in self.pictures]


class GridLayout:
    kind = "grid"

    def __init__(self, runtime: dict, root=None):
        layout, vision = runtime["image_layout"], runtime["grid_vision"]
        self.merge = int(layout["merge_size"])
        self.patch_size = int(layout["patch_size"])
        self.grids = {name: tuple(grid) for name, grid in vision["grids"].items()}
        self.keep = dict(vision["keep"])
        self.tokens = dict(vision["tokens"])

    def crops(self, image_processor, images: Sequence[object], several: Sequence[bool] | None = None) -> GridCrops:
        from tpc.models.qwen_geometry import grid_pixels, nearest_grid

        compiled = list(self.grids.values())
        pictures, sizes = [], []
        for image in images:
            size = picture_size(image)
            own = tuple(image_processor.grid_of(size))
            grid = nearest_grid(own, compiled)
            resized = None if grid == own else grid_pixels(grid, self.patch_size)
            sizes.append(resized)
            pictures.append(GridPicture(size, grid, own, resized, tokens=grid[0] * grid[1] // self.merge**2))
        patches, grids = image_processor.preprocess_grid(list(images), sizes)
        for picture, got in zip(pictures, grids, strict=True):
            if tuple(got) != picture.grid:  # the processor disagrees with the geometry: never run a wrong graph
                raise RuntimeError(f"preprocessed grid {tuple(got)} is not the compiled grid {picture.grid}")
        return GridCrops([np.asarray(p, dtype=np.float32) for p in patches], pictures, [1] * len(pictures))

    def run(self, graphs, crops: GridCrops) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Every picture through its grid's graph (one call per grid); rows padded to the longest."""
        results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        by_grid: dict[tuple[int, int], list[int]] = {}
        for index, picture in enumerate(crops.pictures):
            by_grid.setdefault(picture.grid, []).append(index)
        for grid, rows in by_grid.items():
            stacked = np.stack([crops.patches[i] for i in rows])
            features, kept = graphs.run_graph(grid_vision_name(grid), {GRID_VISION_INPUT: stacked})
            for j, i in enumerate(rows):
                results[i] = (features[j], kept[j])
        counts = [int(results[i][0].shape[0]) for i in range(len(crops.pictures))]
        dim = results[0][0].shape[-1]
        features = np.zeros((len(counts), max(counts), dim), dtype=np.float32)
        kept = np.full((len(counts), max(counts)), -1, dtype=np.int64)
        for i, count in enumerate(counts):
            features[i, :count], kept[i, :count] = results[i]
            crops.pictures[i].kept = count
        return features, kept, counts

    def assemble(self, crops: GridCrops, features: np.ndarray, kept: np.ndarray, counts: Sequence[int]) -> Assembled:
        return Assembled(features, list(counts), kept)
