"""LLaVA-1.5 (``LlavaForConditionalGeneration``, transformers 5.x).

The adapter cuts the model into the three graphs tpc exports:

* the vision boundary ``pixel_values -> image_features`` (CLIP tower, feature layer
  ``vision_feature_layer``, [CLS] dropped, projector), where the selection passes act;
* the embedding step ``(input_ids, image_features) -> inputs_embeds`` that places the
  kept features at the ``<image>`` placeholder positions (no NonZero: a cumulative
  count of placeholders indexes the feature rows);
* one decoder step ``(inputs_embeds, attention_mask, position_ids, past...) ->
  (logits of the last position, present...)`` that serves prefill (past length 0) and
  decode (one token) with the same weights.
"""

from __future__ import annotations

import torch
from torch import nn

from tpc.errors import ModelLoadError
from tpc.models.base import TextLayout, VisionLayout
from tpc.models.decoder_common import cache_kwargs, causal_padding_mask


class LlavaVisionBoundary(nn.Module):
    """CLIP tower + feature-layer pick + projector, as ``get_image_features`` computes it."""

    def __init__(self, model, feature_layer: int):
        super().__init__()
        self.vision_tower = model.model.vision_tower
        self.multi_modal_projector = model.model.multi_modal_projector
        self.feature_layer = feature_layer

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        patches = out.hidden_states[self.feature_layer][:, 1:]
        return self.multi_modal_projector(patches)


class LlavaEmbeddingStep(nn.Module):
    """Token embeddings with image features scattered into the placeholder rows."""

    def __init__(self, model, image_token_id: int):
        super().__init__()
        self.embed_tokens = model.get_input_embeddings()
        self.image_token_id = image_token_id

    def forward(self, input_ids: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        text = self.embed_tokens(input_ids)
        is_image = input_ids == self.image_token_id
        # Row r of the image features goes to the r-th placeholder of the sample.
        row = torch.cumsum(is_image.to(torch.int64), dim=1) - 1
        row = row.clamp(min=0, max=image_features.shape[1] - 1)
        index = row.unsqueeze(-1).expand(-1, -1, image_features.shape[-1])
        placed = torch.gather(image_features, 1, index)
        return torch.where(is_image.unsqueeze(-1), placed.to(text.dtype), text)


class LlavaDecoderStep(nn.Module):
    """One decoder call with a flat KV cache: prefill when past is empty, else decode."""

    def __init__(self, model):
        super().__init__()
        from transformers import DynamicCache  # noqa: F401  (import check at build time)

        self.language_model = model.model.language_model
        self.lm_head = model.lm_head
        self.text_config = model.config.text_config
        self.num_layers = self.text_config.num_hidden_layers

    def hf_positions(self, position_ids: torch.Tensor) -> torch.Tensor:
        """The position ids as the transformers model takes them (M-RoPE families reorder them)."""
        return position_ids

    def forward(self, inputs_embeds, attention_mask, position_ids, past):
        from transformers import DynamicCache

        mask = causal_padding_mask(attention_mask, inputs_embeds.shape[1], inputs_embeds.dtype)
        cache = DynamicCache(
            ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.num_layers)],
            config=self.text_config,
        )
        out = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=mask,
            position_ids=self.hf_positions(position_ids),
            use_cache=True,
            **cache_kwargs(self.language_model, cache),
        )
        logits = self.lm_head(out.last_hidden_state[:, -1, :])
        present = []
        for layer in cache.layers:
            present += [layer.keys, layer.values]
        return (logits, *present)


def text_layout(config, tokenizer, position_dims: int = 1) -> TextLayout:
    """The decoder geometry of a LLaVA-style config (``text_config``, ``image_token_id``); ``position_dims``
    3 for M-RoPE decoders (Qwen)."""
    tc = config.text_config
    eos = tc.eos_token_id if tc.eos_token_id is not None else getattr(tokenizer, "eos_token_id", None)
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
    pad = tc.pad_token_id if tc.pad_token_id is not None else getattr(tokenizer, "pad_token_id", None)
    return TextLayout(
        num_layers=tc.num_hidden_layers,
        num_kv_heads=tc.num_key_value_heads or tc.num_attention_heads,
        head_dim=getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads,
        hidden_size=tc.hidden_size,
        vocab_size=tc.vocab_size,
        max_context=tc.max_position_embeddings,
        image_token_id=config.image_token_id,
        eos_token_ids=eos_ids,
        pad_token_id=pad if pad is not None else (eos_ids[0] if eos_ids else 0),
        position_dims=position_dims,
    )


class LlavaAdapter:
    """Knows where LLaVA-1.5's visual tokens are and how to cut the model for export."""

    family = "llava"
    title = "LLaVA-1.5"
    default_method = "fastervlm"  # when --method is not given

    def __init__(self, model, processor):
        config = model.config
        if getattr(config, "model_type", None) != self.family:
            raise ModelLoadError(
                f"model type {getattr(config, 'model_type', None)!r} is not {self.title} ({self.family!r})"
            )
        if not isinstance(config.vision_feature_layer, int):
            raise ModelLoadError("multi-layer vision features are not supported (vision_feature_layer is a list)")
        if config.vision_feature_select_strategy != "default":
            raise ModelLoadError("only vision_feature_select_strategy='default' ([CLS] dropped) is supported")
        self.model = model
        self.processor = processor
        vc, tc = config.vision_config, config.text_config
        num_layers = vc.num_hidden_layers
        # hidden_states has num_layers + 1 entries (embeddings first); entry i is the
        # output of layer i - 1.
        hs_index = config.vision_feature_layer % (num_layers + 1)
        if hs_index == 0:
            raise ModelLoadError("vision_feature_layer selects the embeddings, not a transformer layer")
        self.feature_hidden_index = hs_index
        self.vision = VisionLayout(
            layers_path="vision_tower.encoder.layers",
            projector_path="multi_modal_projector",
            num_layers=num_layers,
            feature_layer=hs_index - 1,
            num_heads=vc.num_attention_heads,
            head_dim=vc.hidden_size // vc.num_attention_heads,
            num_patches=(vc.image_size // vc.patch_size) ** 2,
            has_cls=True,
            image_size=vc.image_size,
            feature_dim=tc.hidden_size,
        )
        self.text = text_layout(config, getattr(processor, "tokenizer", None))

    # -- how the runtime turns per-crop features into the image's token rows ---------
    def image_layout(self) -> dict:
        """One crop per image: the vision graph's rows are the image's tokens."""
        return {"kind": "single", "crops_max": 1}

    def layout_samples(self) -> list[tuple[str, object]]:
        """Pictures whose crops-to-rows arrangement compile checks end to end (none: one crop, checked as is)."""
        return []

    def max_image_tokens(self, keep: int) -> int:
        """The most token rows one picture can occupy in the prompt at ``keep`` tokens per crop."""
        return keep

    def image_token_counts(self, keep: int, several_pictures: bool = False) -> list[int] | None:
        """Every length a picture's image block can have at ``keep`` tokens per crop (None: unbounded).

        In-LLM pruning compiles one stage selector per length."""
        return [keep]

    def write_runtime_files(self, out) -> dict[str, str]:
        """Extra files the runtime reads (none for LLaVA-1.5); name -> file."""
        return {}

    # -- graphs to export ---------------------------------------------------
    def vision_boundary(self) -> nn.Module:
        return LlavaVisionBoundary(self.model, self.feature_hidden_index).eval()

    def embedding_step(self) -> nn.Module:
        return LlavaEmbeddingStep(self.model, self.text.image_token_id).eval()

    def decoder_step(self) -> nn.Module:
        return LlavaDecoderStep(self.model).eval()

    # -- eager reference ----------------------------------------------------
    @torch.no_grad()
    def reference_vision(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eager tensors the method references need, computed by HF's own modules.

        ``hidden_states``: every layer's output (embeddings first); ``hidden``: the
        feature layer's output with [CLS] [B,T,Dv]; ``patches``: without [CLS];
        ``cls_q``/``keys``/``scale``: the feature layer's [CLS] query, keys and scale.
        """
        tower = self.model.model.vision_tower
        out = tower(pixel_values, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states[self.feature_hidden_index]
        q, k, scale = self.reference_qk(out.hidden_states, self.vision.feature_layer)
        return {
            "hidden_states": out.hidden_states,
            "hidden": hidden,
            "patches": hidden[:, 1:],
            "cls_q": q[:, :, :1],
            "keys": k,
            "scale": scale,
        }

    @torch.no_grad()
    def reference_qk(self, hidden_states, layer_index: int):
        """Query and key [B,H,T,hd] of ViT layer ``layer_index``, from its own modules."""
        layer = self.model.model.vision_tower.encoder.layers[layer_index]
        x = layer.layer_norm1(hidden_states[layer_index])
        b, t, _ = x.shape
        h, hd = self.vision.num_heads, self.vision.head_dim
        q = layer.self_attn.q_proj(x).view(b, t, h, hd).transpose(1, 2)
        k = layer.self_attn.k_proj(x).view(b, t, h, hd).transpose(1, 2)
        return q, k, torch.tensor(layer.self_attn.scale)

    @torch.no_grad()
    def project(self, patches: torch.Tensor) -> torch.Tensor:
        return self.model.model.multi_modal_projector(patches)
