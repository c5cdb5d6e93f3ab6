"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): anyres crops, unpad and ``image_newline``.

The processor turns one image into a base crop plus ``grid_h x grid_w`` sub-crops chosen
from the checkpoint's ``image_grid_pinpoints``. tpc makes the crops the vision graph's
batch axis, so one graph (CLIP tower, feature layer, [CLS] dropped, projector, and the
selection passes) serves every grid; the graph is the LLaVA-1.5 one. What differs is how
the runtime arranges a picture's per-crop rows into its token sequence (METHODS.md):

* unpruned: exactly Hugging Face's ``pack_image_features``: the base crop, then the
  sub-crops merged into one grid, unpadded to the picture's aspect ratio, with
  ``image_newline`` after every row;
* pruned: every crop keeps its own top-``keep``; the base crop's kept tokens come first,
  then the sub-crop tokens in the raster order of the merged grid, no unpad, no newline.

``image_layout`` records that arrangement in the manifest and ``write_runtime_files``
writes the newline vector, so the runtime needs neither torch nor the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tpc.errors import ModelLoadError
from tpc.models.llava import LlavaAdapter

NEWLINE_FILE = "image_newline.npy"


class LlavaNextAdapter(LlavaAdapter):
    family = "llava_next"
    title = "LLaVA-NeXT"

    def __init__(self, model, processor):
        super().__init__(model, processor)
        config = model.config
        pinpoints = [list(map(int, p)) for p in (config.image_grid_pinpoints or [])]
        if not pinpoints:
            raise ModelLoadError("LLaVA-NeXT config has no image_grid_pinpoints")
        crop = self.vision.image_size
        if any(h % crop or w % crop for h, w in pinpoints):
            raise ModelLoadError(f"image_grid_pinpoints {pinpoints} are not multiples of the crop size {crop}")
        self.pinpoints = pinpoints
        self.tokens_per_side = int(round(self.vision.num_patches**0.5))

    def image_layout(self) -> dict:
        largest = max((h // self.vision.image_size) * (w // self.vision.image_size) for h, w in self.pinpoints)
        return {
            "kind": "anyres",
            "pinpoints": self.pinpoints,
            "crop_size": self.vision.image_size,
            "tokens_per_side": self.tokens_per_side,
            "crops_max": 1 + largest,
            "newline": NEWLINE_FILE,
        }

    def max_image_tokens(self, keep: int) -> int:
        grids = [(h // self.vision.image_size, w // self.vision.image_size) for h, w in self.pinpoints]
        if keep < self.vision.num_patches:  # pruned: every crop's kept tokens, no newline
            return (1 + max(gh * gw for gh, gw in grids)) * keep
        side = self.tokens_per_side  # unpruned: base + unpadded grid + a newline per row (unpad only removes)
        return max(keep + gh * side * (gw * side + 1) for gh, gw in grids)

    def image_token_counts(self, keep: int, several_pictures: bool = False) -> list[int] | None:
        """Pruned: every crop keeps ``keep``, so one length per crop count of the pinpoints. Unpruned:
        unpad makes the length follow each picture's aspect ratio, so there is no finite set."""
        if keep >= self.vision.num_patches:
            return None
        crop = self.vision.image_size
        return sorted({(1 + (h // crop) * (w // crop)) * keep for h, w in self.pinpoints})

    def write_runtime_files(self, out: Path) -> dict[str, str]:
        newline = self.model.model.image_newline.detach().float().cpu().numpy().astype(np.float32)
        np.save(Path(out) / NEWLINE_FILE, newline)
        return {"image_newline": NEWLINE_FILE}

    # -- the layout check compile runs: synthetic pictures of every grid shape ---------
    def layout_samples(self) -> list[tuple[str, object]]:
        """One synthetic picture per distinct crop grid of the pinpoints (tall, wide, square...)."""
        from PIL import Image

        from tpc.models.anyres import grid_shape

        samples, seen = [], set()
        rng = np.random.default_rng(0)
        for h, w in self.pinpoints:
            size = (max(8, h - 29), max(8, w - 47))  # not a pinpoint exactly: unpad has work to do
            grid = grid_shape(size, self.pinpoints, self.vision.image_size)
            if grid in seen:
                continue
            seen.add(grid)
            pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            samples.append((f"{size[0]}x{size[1]} (grid {grid[0]}x{grid[1]})", Image.fromarray(pixels)))
        return samples

    def reference_rows(self, image, method, keep: int, params: dict):
        """The picture's token rows by Hugging Face (unpruned) or by METHODS.md's per-crop rule (pruned).

        Returns (rows [n, D], labels [n]: crop * N + patch, -1 for a newline row). Independent of the
        runtime's numpy assembly: the pruned order is rebuilt here from the merged grid's coordinates.
        """
        import torch

        out = self.processor.image_processor([image], return_tensors="pt")
        pixels, sizes = out["pixel_values"], out["image_sizes"]
        n = self.vision.num_patches
        side = self.tokens_per_side
        with torch.no_grad():
            if keep >= n:
                packed = self.model.model.get_image_features(pixels, sizes, return_dict=True).pooler_output
                rows = packed[0] if isinstance(packed, (list, tuple)) else packed
                return rows.float(), None
            from tpc.models.anyres import grid_shape

            gh, gw = grid_shape(tuple(int(v) for v in sizes[0]), self.pinpoints, self.vision.image_size)
            crops = pixels[0, : 1 + gh * gw]
            indices, features, _ = method.reference(self, crops, keep, **params)
        base = [(i, -1, -1, 0 * n + int(p)) for i, p in enumerate(indices[0].tolist())]
        merged = []
        for crop in range(1, 1 + gh * gw):
            row, col = divmod(crop - 1, gw)
            for i, p in enumerate(indices[crop].tolist()):
                y, x = row * side + int(p) // side, col * side + int(p) % side
                merged.append((i, y, x, crop * n + int(p)))
        merged.sort(key=lambda item: (item[1], item[2]))
        ordered = base + merged  # the base crop's tokens, then the merged grid in raster order
        rows = [features[label // n, i] for i, _, _, label in ordered]
        return torch.stack(rows).float(), torch.tensor([label for *_, label in ordered])
