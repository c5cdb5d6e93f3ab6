"""Built-in model presets: a hub alias and two offline, randomly initialised models.

``llava-tiny`` and ``llava-bench`` are real ``LlavaForConditionalGeneration``
architectures with seeded random weights and an in-code processor, so tests, the demo
and benchmarks run with no network. ``llava`` is the published LLaVA-1.5-7B checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LLAVA_15_7B = "llava-hf/llava-1.5-7b-hf"
LLAVA_NEXT_MISTRAL_7B = "llava-hf/llava-v1.6-mistral-7b-hf"
# llava-hf/llava-v1.6-*: grids 1x2, 2x1, 2x2, 3x1, 1x3 of 336 px crops
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    hub_id: str | None = None  # set for presets that alias a published checkpoint
    vision: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    # Std of the random init. Larger than HF's 0.02 so that random models have
    # well-separated [CLS] attention scores and logits (fewer near-ties).
    initializer_range: float = 0.02
    # Gain on the ViT q/k projections: random CLIP weights give near-uniform attention;
    # a trained CLIP's [CLS] attention is peaked. A gain of 3 makes random presets
    # look like the latter, so top-k boundaries are not decided by float noise.
    attention_gain: float = 1.0
    family: str = "llava"  # config.model_type of the model it builds (tpc.models.families)
    text_model: str = "llama"  # decoder config: llama or mistral
    pinpoints: tuple = ()  # llava_next: image_grid_pinpoints

    @property
    def builtin(self) -> bool:
        return self.hub_id is None


_CLIP_336 = dict(image_size=336, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5)
_TOKENIZER_IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=3)

PRESETS: dict[str, Preset] = {
    "llava": Preset("llava", "LLaVA-1.5-7B from the hub (needs network or a local cache)", hub_id=LLAVA_15_7B),
    "llava-tiny": Preset(
        "llava-tiny",
        "tiny random LLaVA (CLIP 336/14 geometry, 576 patches; 3 ViT layers; 4-layer Llama) for tests",
        vision=dict(
            _CLIP_336,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            projection_dim=64,
        ),
        text=dict(
            _TOKENIZER_IDS,
            vocab_size=320,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            rms_norm_eps=1e-5,
        ),
        initializer_range=0.2,
        attention_gain=3.0,
    ),
    "llava-next": Preset(
        "llava-next",
        "LLaVA-NeXT (v1.6) Mistral-7B from the hub (needs network or a local cache)",
        hub_id=LLAVA_NEXT_MISTRAL_7B,
        family="llava_next",
    ),
    "llava-next-tiny": Preset(
        "llava-next-tiny",
        "tiny random LLaVA-NeXT (anyres 336/14 crops, the v1.6 pinpoints; 3 ViT layers; 4-layer Mistral) for tests",
        vision=dict(
            _CLIP_336,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            projection_dim=64,
        ),
        text=dict(
            _TOKENIZER_IDS,
            vocab_size=320,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            sliding_window=None,
        ),
        initializer_range=0.2,
        attention_gain=3.0,
        family="llava_next",
        text_model="mistral",
        pinpoints=tuple(map(tuple, NEXT_PINPOINTS)),
    ),
    "llava-bench": Preset(
        "llava-bench",
        "random LLaVA with CLIP ViT-L/14-336 geometry (24 layers) and a ~0.5B Llama decoder",
        vision=dict(
            _CLIP_336,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            projection_dim=768,
        ),
        text=dict(
            _TOKENIZER_IDS,
            vocab_size=32064,
            hidden_size=1536,
            intermediate_size=4096,
            num_hidden_layers=14,
            num_attention_heads=12,
            num_key_value_heads=12,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
        ),
        initializer_range=0.02,
        attention_gain=3.0,
    ),
    "llava-next-bench": Preset(
        "llava-next-bench",
        "random LLaVA-NeXT: CLIP ViT-L/14-336 geometry, a 2x2 grid of crops (5 with the base), ~0.5B decoder",
        vision=dict(
            _CLIP_336,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            projection_dim=768,
        ),
        text=dict(
            _TOKENIZER_IDS,
            vocab_size=32064,
            hidden_size=1536,
            intermediate_size=4096,
            num_hidden_layers=14,
            num_attention_heads=12,
            num_key_value_heads=12,
            max_position_embeddings=8192,
            rms_norm_eps=1e-5,
            sliding_window=None,
        ),
        initializer_range=0.02,
        attention_gain=3.0,
        family="llava_next",
        text_model="mistral",
        pinpoints=((672, 672),),
    ),
}


def build_preset(preset: Preset):
    """Instantiate a built-in preset: (model, processor) of its family, seeded random weights."""
    import torch
    import transformers
    from transformers import CLIPVisionConfig

    from tpc.models.tiny_processor import IMAGE_TOKEN_ID, build_llava_next_processor, build_llava_processor

    vision = CLIPVisionConfig(**preset.vision, initializer_range=preset.initializer_range)
    text_config_class = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig}[preset.text_model]
    text = text_config_class(**preset.text, initializer_range=preset.initializer_range)
    common = dict(
        vision_config=vision,
        text_config=text,
        image_token_index=IMAGE_TOKEN_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    if preset.family == "llava_next":
        pinpoints = [list(p) for p in preset.pinpoints]
        config = transformers.LlavaNextConfig(**common, image_grid_pinpoints=pinpoints)
        model_class = transformers.LlavaNextForConditionalGeneration
    else:
        config = transformers.LlavaConfig(**common, image_seq_length=(vision.image_size // vision.patch_size) ** 2)
        model_class = transformers.LlavaForConditionalGeneration
    config._attn_implementation = "sdpa"
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(preset.seed)
    try:
        model = model_class(config)
        with torch.no_grad():
            for layer in model.model.vision_tower.encoder.layers:
                layer.self_attn.q_proj.weight.mul_(preset.attention_gain)
                layer.self_attn.k_proj.weight.mul_(preset.attention_gain)
    finally:
        torch.random.set_rng_state(generator_state)
    model.eval()
    if preset.family == "llava_next":
        processor = build_llava_next_processor(vision.image_size, vision.patch_size, pinpoints)
    else:
        processor = build_llava_processor(vision.image_size, vision.patch_size)
    return model, processor
