"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): dynamic resolution, window attention, M-RoPE.

What differs from the LLaVA families, and how the adapter cuts the model:

* **one vision graph per compiled grid.** The ViT reads an image as ``grid_h * grid_w`` flattened
  patches (``3 * 2 * 14 * 14`` values each, the processor's order). Every table that depends on the
  grid (the 2-D rotary angles, the window each patch belongs to) is a constant of that grid's graph;
  the batch axis holds pictures of the same grid. The graphs share one weights file (the compiler
  writes every tensor once).
* **processor order, no window permutation.** Hugging Face permutes the patches into window order so
  that each window is a contiguous chunk (``cu_window_seqlens``) and undoes the permutation after the
  merger. The exported boundary keeps the processor's order throughout: a window block gathers each
  window's patches (padded to the largest window, the padding masked as keys), attends within them and
  scatters the rows back; full blocks attend everywhere. The same keys meet the same queries, so the
  outputs are Hugging Face's up to float rounding, and the attention a merged token receives needs no
  reordering.
* **pruning after the merger** (METHODS.md): the merger's RMSNorm runs per patch, the four patches of
  a merged token are concatenated (``[B, M, 4 * D]``) and the merger's MLP is the "projector": a
  method selects merged tokens before it. A merged token's score is the mean of its four patches'
  received attention in the last ViT block (a full-attention block; ``token_group`` = 4).
* **the decoder takes 3-D positions** ``position_ids`` ``[B, S, 3]`` (t, h, w; batch first so the
  runtime slices samples the same way as 1-D positions) and hands Hugging Face ``[3, B, S]``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from tpc.errors import ModelLoadError
from tpc.models.base import VisionLayout
from tpc.models.families import GRID_METHODS
from tpc.models.llava import LlavaDecoderStep, LlavaEmbeddingStep, text_layout

PATCH_SCORES_GROUP = "merge"


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class QwenExportBlock(nn.Module):
    """One ViT block on ``[B, L, D]`` with fused attention, over all patches or within windows.

    A window block gathers each window's patches (``windows`` [nW, S]: patch indices, padded to the
    largest window by repeating one of its patches, ``window_keys`` [1, nW, 1, 1, S]: which slots are real
    keys), attends within each window and scatters the rows back (``window_rows`` [L]: each patch's slot
    in the flattened [nW * S] layout). Cost O(L * S), not O(L^2).
    """

    def __init__(self, block):
        super().__init__()
        self.norm1, self.norm2, self.mlp = block.norm1, block.norm2, block.mlp
        self.qkv, self.proj = block.attn.qkv, block.attn.proj
        self.heads = block.attn.num_heads
        self.scale = float(getattr(block.attn, "scaling", (block.attn.qkv.out_features // 3 // self.heads) ** -0.5))

    def forward(self, x, cos, sin, windows=None):
        b, length, width = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, H, L, hd]
        dtype = q.dtype
        qf, kf = q.float(), k.float()
        q = (qf * cos + _rotate_half(qf) * sin).to(dtype)
        k = (kf * cos + _rotate_half(kf) * sin).to(dtype)
        if windows is None:
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            index, keys, rows = windows
            n_windows, size = index.shape
            # windows join the batch axis: [B * nW, H, S, hd] (the exporter takes 4-D attention only)
            q, k, v = (
                t[:, :, index].permute(0, 2, 1, 3, 4).reshape(b * n_windows, self.heads, size, -1) for t in (q, k, v)
            )
            mask = keys.expand(b, n_windows, 1, 1, size).reshape(b * n_windows, 1, 1, size)
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
            out = out.reshape(b, n_windows, self.heads, size, -1).permute(0, 2, 1, 3, 4)
            out = out.reshape(b, self.heads, n_windows * size, -1)[:, :, rows]
        x = x + self.proj(out.transpose(1, 2).reshape(b, length, width))
        return x + self.mlp(self.norm2(x))


def window_tables(window_of_patch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gather index [nW, S], key mask [1, nW, 1, 1, S], scatter rows [L]) from each patch's window id."""
    ids = torch.as_tensor(window_of_patch, dtype=torch.int64)
    members = [torch.nonzero(ids == w).flatten() for w in range(int(ids.max()) + 1)]
    size = max(len(m) for m in members)
    index = torch.stack([torch.cat([m, m[:1].expand(size - len(m))]) for m in members])
    keys = torch.stack([torch.arange(size) < len(m) for m in members])[None, :, None, None, :]
    rows = torch.empty(len(ids), dtype=torch.int64)
    for w, m in enumerate(members):
        rows[m] = w * size + torch.arange(len(m))
    return index, keys, rows


class QwenVisionBoundary(nn.Module):
    """Patches of one grid -> merged, projected tokens ``[B, M, D_llm]``, in the processor's order."""

    def __init__(self, model, grid: tuple[int, int]):
        super().__init__()
        from tpc.models.qwen_geometry import vision_positions, window_ids

        visual = model.model.visual
        vc = model.config.vision_config
        self.patch_embed = visual.patch_embed
        self.blocks = nn.ModuleList(QwenExportBlock(block) for block in visual.blocks)
        self.full = set(getattr(vc, "fullatt_block_indexes", None) or range(len(visual.blocks)))
        self.ln_q = visual.merger.ln_q
        self.merger_mlp = visual.merger.mlp
        self.group = vc.spatial_merge_size**2
        positions = torch.as_tensor(vision_positions(grid, vc.spatial_merge_size))
        inv_freq = visual.rotary_pos_emb.inv_freq.float()
        freqs = (positions[..., None].float() * inv_freq).flatten(1)  # [L, 2 * hd/4]: h angles, then w
        angles = torch.cat([freqs, freqs], dim=-1)  # [L, hd]
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        self.windowed = len(self.full) < len(self.blocks)
        if self.windowed:
            index, keys, rows = window_tables(window_ids(grid, vc.spatial_merge_size, vc.window_size, vc.patch_size))
            self.register_buffer("window_index", index, persistent=False)
            self.register_buffer("window_keys", keys, persistent=False)
            self.register_buffer("window_rows", rows, persistent=False)

    def forward(self, pixel_patches: torch.Tensor) -> torch.Tensor:
        b, length, _ = pixel_patches.shape
        x = self.patch_embed(pixel_patches.reshape(b * length, -1)).reshape(b, length, -1)
        windows = (self.window_index, self.window_keys, self.window_rows) if self.windowed else None
        for index, block in enumerate(self.blocks):
            x = block(x, self.cos, self.sin, None if index in self.full else windows)
        merged = self.ln_q(x).reshape(b, length // self.group, -1)
        return self.merger_mlp(merged)


class QwenDecoderStep(LlavaDecoderStep):
    """The LLaVA decoder step with 3-D M-RoPE positions ``[B, S, 3]`` (t, h, w)."""

    def hf_positions(self, position_ids: torch.Tensor) -> torch.Tensor:
        return position_ids.permute(2, 0, 1)


class QwenVLAdapter:
    """Knows where Qwen2.5-VL's visual tokens are, per compiled grid, and how to cut the model."""

    family = "qwen2_5_vl"
    title = "Qwen2.5-VL"
    default_method = "received"  # no [CLS]: the attention merged tokens receive in the last ViT block
    supported_methods = GRID_METHODS  # methods that select merged tokens after the 2x2 merger
    window_order = True  # Hugging Face's tower runs in window order (the references undo it)

    def __init__(self, model, processor):
        config = model.config
        if getattr(config, "model_type", None) != self.family:
            raise ModelLoadError(
                f"model type {getattr(config, 'model_type', None)!r} is not {self.title} ({self.family!r})"
            )
        vc = config.vision_config
        full = getattr(vc, "fullatt_block_indexes", None)
        if full is not None and (vc.depth - 1) not in full:
            raise ModelLoadError(
                f"{self.title}: the last ViT block ({vc.depth - 1}) is a window-attention block "
                f"(fullatt_block_indexes={list(full)}); the received-attention score needs a full-attention one"
            )
        self.model = model
        self.processor = processor
        self.merge = vc.spatial_merge_size
        self.patch_size = vc.patch_size
        self.patch_values = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
        self.text = text_layout(config, getattr(processor, "tokenizer", None), position_dims=3)
        image_processor = getattr(processor, "image_processor", None)
        self.min_pixels = int(getattr(image_processor, "min_pixels", None) or 56 * 56)
        self.max_pixels = int(getattr(image_processor, "max_pixels", None) or 14 * 14 * 4 * 1280)
        self.grids: list[tuple[int, int]] = []
        self.grid_keep: dict[tuple[int, int], int] = {}  # kept tokens per grid (set_budget)
        self.vision = self._layout((self.merge * 2, self.merge * 2))  # replaced by set_grids

    # -- grids ----------------------------------------------------------------
    def set_grids(self, grids: list[tuple[int, int]]) -> None:
        """The grids (in patches) this compile serves; ``vision`` becomes the largest one's layout."""
        bad = [g for g in grids if g[0] % self.merge or g[1] % self.merge or min(g) < self.merge]
        if bad:
            raise ModelLoadError(f"{self.title}: grids {bad} are not multiples of the merge size {self.merge}")
        self.grids = [tuple(map(int, g)) for g in grids]
        self.vision = self._layout(max(self.grids, key=lambda g: g[0] * g[1]))

    def set_budget(self, ratio: float | None, keep: int | None) -> None:
        """Each compiled grid's kept-token count under ``--ratio``/``--keep`` (METHODS.md: per picture)."""
        self.grid_keep = {grid: self.keep_of(grid, ratio, keep) for grid in self.grids}

    def tokens_of(self, grid: tuple[int, int]) -> int:
        return grid[0] * grid[1] // self.merge**2

    def keep_of(self, grid: tuple[int, int], ratio: float | None, keep: int | None) -> int:
        """Merged tokens one picture of ``grid`` keeps: ``ceil(M * (1 - R))`` (METHODS.md), or ``keep`` capped at M."""
        tokens = self.tokens_of(grid)
        if keep is not None:
            return min(int(keep), tokens)
        if not ratio:
            return tokens
        return max(1, math.ceil(tokens * (1.0 - ratio) - 1e-9))

    def vision_widths(self) -> tuple[int, int]:
        """(ViT width, merged-token width): Qwen2.5-VL's vision ``hidden_size`` and ``out_hidden_size``."""
        vc = self.model.config.vision_config
        return vc.hidden_size, vc.out_hidden_size

    def _layout(self, grid: tuple[int, int]) -> VisionLayout:
        vc = self.model.config.vision_config
        width, out_width = self.vision_widths()
        return VisionLayout(
            layers_path="blocks",
            projector_path="merger_mlp",
            num_layers=vc.depth,
            feature_layer=vc.depth - 1,
            num_heads=vc.num_heads,
            head_dim=width // vc.num_heads,
            num_patches=self.tokens_of(grid),
            has_cls=False,
            image_size=0,
            feature_dim=out_width,
            grid=(grid[0] // self.merge, grid[1] // self.merge),
            token_group=self.merge**2,
        )

    def for_grid(self, grid: tuple[int, int]) -> QwenGridView:
        return QwenGridView(self, tuple(grid))

    # -- runtime -------------------------------------------------------------
    def image_layout(self) -> dict:
        return {
            "kind": "grid",
            "grids": [list(g) for g in self.grids],
            "patch_size": self.patch_size,
            "merge_size": self.merge,
            "patch_values": self.patch_values,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "crops_max": 1,
        }

    def max_image_tokens(self, keep: int) -> int:
        """The longest image block a picture gives the LLM (the largest grid's kept tokens)."""
        return max(self.grid_keep.values()) if self.grid_keep else keep

    def image_token_counts(self, keep: int, several_pictures: bool = False) -> list[int] | None:
        """Every image-block length a picture can have: one per compiled grid's kept count."""
        return sorted(set(self.grid_keep.values())) if self.grid_keep else [keep]

    def layout_samples(self) -> list:
        return []

    def write_runtime_files(self, out: Path) -> dict[str, str]:
        return {}

    # -- graphs ---------------------------------------------------------------
    def vision_boundary(self, grid: tuple[int, int] | None = None) -> nn.Module:
        return QwenVisionBoundary(self.model, grid or self.grids[-1]).eval()

    def embedding_step(self) -> nn.Module:
        return LlavaEmbeddingStep(self.model, self.text.image_token_id).eval()

    def decoder_step(self) -> nn.Module:
        return QwenDecoderStep(self.model).eval()


class QwenGridView:
    """The adapter seen at one grid: what the per-picture method references and the vision check use.

    Its reference runs Hugging Face's own vision tower (window order, ``cu_seqlens``), independent of
    the exported boundary's processor-order computation.
    """

    def __init__(self, adapter: QwenVLAdapter, grid: tuple[int, int]):
        self.adapter = adapter
        self.grid = grid
        self.model = adapter.model
        self.vision = adapter._layout(grid)
        self.text = adapter.text
        self.title = adapter.title
        self.family = adapter.family

    def grid_thw(self, batch: int) -> torch.Tensor:
        return torch.tensor([[1, self.grid[0], self.grid[1]]] * batch, dtype=torch.int64)

    def window_index(self, thw: torch.Tensor) -> torch.Tensor:
        """Hugging Face's permutation of the merge units of ``thw`` into window order; the identity for a
        tower without windows (Qwen2-VL: ``window_order`` False, the processor's order throughout)."""
        if not self.adapter.window_order:
            return torch.arange(int(thw.prod(dim=-1).sum()) // self.adapter.merge**2)
        from transformers.vision_utils import get_vision_window_index

        vc = self.model.config.vision_config
        return get_vision_window_index(thw, vc.spatial_merge_size, vc.window_size, vc.patch_size)[0]

    @torch.no_grad()
    def reference_vision(self, pixel_patches: torch.Tensor) -> dict:
        """Hugging Face's tower on ``[B, L, P]`` patches: every block's input in WINDOW order
        (``hidden_states``), the merged tokens before the merger MLP in raster order (``patches``),
        and the window permutation."""
        visual = self.model.model.visual
        b, length, _ = pixel_patches.shape
        thw = self.grid_thw(b)
        rows = pixel_patches.reshape(b * length, -1).to(visual.dtype)
        captured: list[torch.Tensor] = []
        hooks = [
            block.register_forward_pre_hook(lambda _m, args, kwargs: captured.append(args[0]), with_kwargs=True)
            for block in visual.blocks
        ]
        try:
            out = visual(rows, grid_thw=thw)
        finally:
            for hook in hooks:
                hook.remove()
        window_index = self.window_index(thw)
        last = out.last_hidden_state  # window order
        captured.append(last)
        group = self.adapter.merge**2
        merged = visual.merger.ln_q(last).reshape(-1, group * last.shape[-1])  # window order of merge units
        merged = merged[torch.argsort(window_index)].reshape(b, length // group, -1)
        hidden_states = [h.reshape(b, length, -1) for h in captured]
        order = torch.argsort(window_index.reshape(b, -1), dim=1)
        _, k, _ = self.reference_qk(hidden_states, self.vision.feature_layer)
        units = k.reshape(b, k.shape[1], -1, group, k.shape[-1]).mean(dim=3)  # [B, H, M, hd], window order
        keys = torch.gather(units, 2, order[:, None, :, None].expand_as(units))
        return {
            "hidden_states": hidden_states,
            "keys": keys,
            "patches": merged,
            "hidden": merged,
            "window_index": window_index.reshape(b, -1) - torch.arange(b)[:, None] * (length // group),
            "features": out.pooler_output.reshape(b, length // group, -1),
        }

    @torch.no_grad()
    def reference_qk(self, hidden_states, layer_index: int):
        """Query and key ``[B, H, L, hd]`` of ViT block ``layer_index``, in window order, by HF's modules."""
        import importlib

        from transformers.vision_utils import get_vision_position_ids

        visual = self.model.model.visual
        apply_rotary_pos_emb_vision = importlib.import_module(type(visual).__module__).apply_rotary_pos_emb_vision
        vc = self.model.config.vision_config
        block = visual.blocks[layer_index]
        x = hidden_states[layer_index]
        b, length, _ = x.shape
        thw = self.grid_thw(1)
        positions = get_vision_position_ids(thw, vc.spatial_merge_size)
        cos, sin = visual.rotary_pos_emb(x, positions)
        if self.adapter.window_order:
            window_index = self.window_index(thw)
            cos, sin = (visual.permute_input_for_window_attn(t, window_index, length) for t in (cos, sin))
        heads = block.attn.num_heads
        qkv = block.attn.qkv(block.norm1(x)).reshape(b, length, 3, heads, -1)
        q, k = qkv[:, :, 0], qkv[:, :, 1]
        q, k = zip(*(apply_rotary_pos_emb_vision(q[i], k[i], cos, sin) for i in range(b)), strict=True)
        q, k = torch.stack(q).transpose(1, 2), torch.stack(k).transpose(1, 2)
        return q, k, torch.tensor(block.attn.scaling)

    def pool_patch_scores(self, column: torch.Tensor, ref: dict) -> torch.Tensor:
        """Per-patch scores in window order ``[B, L]`` -> per merged token in raster order ``[B, M]``:
        the mean of a merged token's patches, the window permutation undone."""
        group = self.adapter.merge**2
        per_unit = column.reshape(column.shape[0], -1, group).mean(dim=-1)  # window order of merge units
        order = torch.argsort(ref["window_index"], dim=1)
        return torch.gather(per_unit, 1, order)

    @torch.no_grad()
    def project(self, merged: torch.Tensor) -> torch.Tensor:
        return self.model.model.visual.merger.mlp(merged)
