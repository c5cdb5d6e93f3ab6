"""What every model adapter tells the compiler about its model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class LoadedModel:
    """A model, its processor, and where they came from (for the manifest)."""

    model: Any
    processor: Any
    source: dict[str, Any] = field(default_factory=dict)
    default_image_sizes: tuple = ()  # grid families' presets: the image sizes compiled when none are given


@dataclass(frozen=True)
class VisionLayout:
    """Where the visual tokens live in the traced vision graph.

    Module paths are the ``nn_module_stack`` paths that torch.export records, relative
    to the boundary module the adapter traces.
    """

    layers_path: str  # e.g. "vision_tower.encoder.layers"
    projector_path: str  # e.g. "multi_modal_projector"
    num_layers: int
    feature_layer: int  # 0-based index of the layer whose output is the feature
    num_heads: int
    head_dim: int
    num_patches: int  # N: patch tokens after dropping [CLS]
    has_cls: bool
    image_size: int
    feature_dim: int  # width of the projected features (the LLM's hidden size)
    grid: tuple[int, int] | None = None  # (rows, cols) of the LLM tokens when not a square of num_patches
    token_group: int = 1  # ViT patches per LLM token (Qwen's 2x2 merger: 4); a token's score is their mean


@dataclass(frozen=True)
class TextLayout:
    """The decoder geometry the exporter, runtime and KV cache need."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_context: int
    image_token_id: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    position_dims: int = 1  # 3: M-RoPE (t, h, w) position ids [B, S, 3]


class ModelAdapter(Protocol):
    family: str
    vision: VisionLayout
    text: TextLayout

    def vision_boundary(self) -> torch.nn.Module: ...
    def embedding_step(self) -> torch.nn.Module: ...
    def decoder_step(self) -> torch.nn.Module: ...
    def reference_vision(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]: ...
