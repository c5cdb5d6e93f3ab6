"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): SigLIP crops without [CLS], anyres_max_N.

What differs from LLaVA-NeXT (``LlavaNextAdapter``, which this adapter extends):

* the vision encoder is SigLIP: no [CLS] token, every one of the ``(384 // 14) ** 2 = 729`` patch
  tokens of a crop is a feature (``vision_feature_select_strategy="full"``, feature layer -1, the
  last kept layer's output before SigLIP's post-layernorm). Methods defined on the [CLS] row are
  refused; the default method scores each patch by the attention it RECEIVES at the feature layer
  (``received``, METHODS.md);
* the crops come from up to 6 x 6 grids of 384 px (the checkpoint's 36 pinpoints), and unpruned
  ``pack_image_features`` downsamples the unpadded grid by bilinear interpolation when it holds more
  than about ``N`` crops' worth of tokens (``vision_aspect_ratio="anyres_max_N"``) before appending
  ``image_newline`` to every row. The runtime reproduces that numpy-side
  (``tpc.models.anyres.onevision_packed_rows``), from the ``anyres_max`` the manifest records;
* the decoder is Qwen2 (q/k/v biases), exported by the same decoder step;
* transformers' processor needs torchvision for its video processor, so the processor is built from
  its parts (``tpc.models.onevision_processor``).

Pruned, each crop keeps its own top-``keep`` and the rows are arranged as for LLaVA-NeXT (base crop
first, then the sub-crops in the merged grid's raster order; no unpad, no newline, no downsampling).
"""

from __future__ import annotations

import torch
from torch import nn

from tpc.errors import ModelLoadError
from tpc.models.base import VisionLayout
from tpc.models.llava import text_layout
from tpc.models.llava_next import NEWLINE_FILE, LlavaNextAdapter

# The crops-to-rows check compile runs: at most this much vision-tower work (graph + reference) per compile
LAYOUT_BUDGET_FLOPS = 2.0e12


class OnevisionVisionBoundary(nn.Module):
    """SigLIP tower + feature-layer pick (every token: no [CLS]) + projector, per crop."""

    def __init__(self, model, feature_layer: int):
        super().__init__()
        self.vision_tower = model.model.vision_tower
        self.multi_modal_projector = model.model.multi_modal_projector
        self.feature_layer = feature_layer

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        return self.multi_modal_projector(out.hidden_states[self.feature_layer])


class LlavaOnevisionAdapter(LlavaNextAdapter):
    family = "llava_onevision"
    title = "LLaVA-OneVision"
    default_method = "received"  # attention received at the feature layer: SigLIP has no [CLS] row

    def __init__(self, model, processor):  # LLaVA's own checks ([CLS] dropped) do not apply: its own here
        from tpc.models.anyres import check_pinpoints, max_crops_of

        config = model.config
        if getattr(config, "model_type", None) != self.family:
            raise ModelLoadError(
                f"model type {getattr(config, 'model_type', None)!r} is not {self.title} ({self.family!r})"
            )
        if not isinstance(config.vision_feature_layer, int):
            raise ModelLoadError("multi-layer vision features are not supported (vision_feature_layer is a list)")
        if config.vision_feature_select_strategy != "full":
            raise ModelLoadError(
                f"{self.title}: only vision_feature_select_strategy='full' (SigLIP has no [CLS]) is supported, "
                f"not {config.vision_feature_select_strategy!r}"
            )
        if getattr(config.vision_config, "model_type", None) != "siglip_vision_model":
            raise ModelLoadError(f"{self.title}: vision tower {config.vision_config.model_type!r} is not SigLIP")
        self.model = model
        self.processor = processor
        vc = config.vision_config
        num_layers = vc.num_hidden_layers
        hs_index = config.vision_feature_layer % (num_layers + 1)
        if hs_index == 0:
            raise ModelLoadError("vision_feature_layer selects the embeddings, not a transformer layer")
        self.feature_hidden_index = hs_index
        self.tokens_per_side = vc.image_size // vc.patch_size
        self.vision = VisionLayout(
            layers_path="vision_tower.encoder.layers",
            projector_path="multi_modal_projector",
            num_layers=num_layers,
            feature_layer=hs_index - 1,
            num_heads=vc.num_attention_heads,
            head_dim=vc.hidden_size // vc.num_attention_heads,
            num_patches=self.tokens_per_side**2,
            has_cls=False,
            image_size=vc.image_size,
            feature_dim=config.text_config.hidden_size,
        )
        self.text = text_layout(config, getattr(processor, "tokenizer", None))
        try:
            self.pinpoints = check_pinpoints(config.image_grid_pinpoints or [], vc.image_size)
            self.max_crops = max_crops_of(config.vision_aspect_ratio)
        except ValueError as exc:
            raise ModelLoadError(f"{self.title}: {exc}") from None

    # -- how the runtime turns per-crop features into the image's token rows ---------
    def image_layout(self) -> dict:
        return dict(super().image_layout(), anyres_max=self.max_crops, newline=NEWLINE_FILE)

    def image_token_counts(self, keep: int, several_pictures: bool = False) -> list[int] | None:
        """LLaVA-NeXT's per-crop-count lengths; ``several_pictures``: also ``keep`` alone, the span of a picture
        in a prompt with several pictures (one crop: the model's multi-image mode)."""
        counts = super().image_token_counts(keep)
        if counts is None or not several_pictures:
            return counts
        return sorted(set(counts) | {keep})

    def _grids(self) -> list[tuple[int, int]]:
        crop = self.vision.image_size
        return sorted({(h // crop, w // crop) for h, w in self.pinpoints})

    def max_image_tokens(self, keep: int) -> int:
        """The most rows a picture can take: pruned, every crop's kept tokens; unpruned, the largest packed
        count over every grid and every unpadded size it can have (unpad trims one side, then
        ``anyres_max`` may downsample)."""
        from tpc.models.anyres import downsampled_shape

        if keep < self.vision.num_patches:
            return (1 + max(gh * gw for gh, gw in self._grids())) * keep
        side, most = self.tokens_per_side, 0
        for gh, gw in self._grids():
            rows_full, cols_full = gh * side, gw * side
            shapes = [(r, cols_full) for r in range(1, rows_full + 1)] + [(rows_full, c) for c in range(1, cols_full)]
            for rows, cols in shapes:
                rows, cols = downsampled_shape(rows, cols, side, self.max_crops) or (rows, cols)
                most = max(most, rows * (cols + 1))
        return keep + most

    # -- the layout check compile runs ---------------------------------------------
    def layout_samples(self) -> list[tuple[str, object]]:
        """One synthetic picture per distinct crop grid, every grid when the check fits ``LAYOUT_BUDGET_FLOPS``.

        The 36 grids of the released pinpoints are 477 crops: about a minute for the tiny preset, hours for
        the 0.5B checkpoint's SigLIP (~640 GFLOP a crop, twice: graph and reference). Over the budget the
        check keeps the grids that exercise each code path first (tall, wide, one sub-crop, the smallest grid
        that ``anyres_max`` downsamples), then the smallest others while they fit; the compile report lists
        the pictures checked.
        """
        from tpc.models.anyres import downsampled_shape

        samples = super().layout_samples()
        grids = [tuple(int(v) for v in label.split("grid ")[1].rstrip(")").split("x")) for label, _ in samples]
        crops = {grid: 1 + grid[0] * grid[1] for grid in grids}
        budget = max(1, int(LAYOUT_BUDGET_FLOPS // self._crop_flops()))
        if sum(crops.values()) <= budget:
            return samples
        side = self.tokens_per_side
        downsampled = [g for g in grids if downsampled_shape(g[0] * side, g[1] * side, side, self.max_crops)]
        first = [g for g in ((2, 1), (1, 2), (1, 1)) if g in crops]
        first += sorted(downsampled, key=lambda g: crops[g])[:1]
        order = first + sorted((g for g in grids if g not in first), key=lambda g: crops[g])
        chosen, used = set(), 0
        for grid in order:
            if used + crops[grid] > budget and chosen:
                continue
            chosen.add(grid)
            used += crops[grid]
        return [sample for sample, grid in zip(samples, grids, strict=True) if grid in chosen]

    def _crop_flops(self) -> float:
        """Floating-point operations of one crop through the vision tower (projections, MLP, attention)."""
        vc = self.model.config.vision_config
        tokens, width = self.vision.num_patches, vc.hidden_size
        per_layer = tokens * (8 * width**2 + 4 * width * vc.intermediate_size) + 4 * tokens**2 * width
        return float(per_layer * (self.vision.feature_layer + 1))

    # -- eager reference ----------------------------------------------------
    @torch.no_grad()
    def reference_vision(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eager tensors the method references need, by HF's own modules (no [CLS]: ``hidden`` and
        ``patches`` are the same every-token features; no ``cls_q``)."""
        tower = self.model.model.vision_tower
        out = tower(pixel_values, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states[self.feature_hidden_index]
        _, k, scale = self.reference_qk(out.hidden_states, self.vision.feature_layer)
        return {"hidden_states": out.hidden_states, "hidden": hidden, "patches": hidden, "keys": k, "scale": scale}

    def vision_boundary(self) -> nn.Module:
        return OnevisionVisionBoundary(self.model, self.feature_hidden_index).eval()
