"""Built-in model presets: hub aliases and offline, randomly initialised models of each family.

``*-tiny`` and ``*-bench`` are real architectures of their family (``LlavaForConditionalGeneration``,
``LlavaNextForConditionalGeneration``, ``LlavaOnevisionForConditionalGeneration``,
``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``) with seeded random weights and
an in-code processor, so tests, the demo and benchmarks run with no network. ``llava``, ``llava-next``,
``llava-onevision``, ``qwen2-vl`` and ``qwen2.5-vl`` are published checkpoints. ``build_preset`` dispatches
on the preset's family (``_FAMILY_CONFIGS``, ``_QWEN_CLASSES``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LLAVA_15_7B = "llava-hf/llava-1.5-7b-hf"
LLAVA_NEXT_MISTRAL_7B = "llava-hf/llava-v1.6-mistral-7b-hf"
LLAVA_ONEVISION_05B = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
QWEN2_5_VL_3B = "Qwen/Qwen2.5-VL-3B-Instruct"
QWEN2_VL_2B = "Qwen/Qwen2-VL-2B-Instruct"
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
    text_model: str = "llama"  # decoder config: llama, mistral or qwen2
    pinpoints: tuple = ()  # llava_next, llava_onevision: image_grid_pinpoints
    vision_aspect_ratio: str = "anyres_max_9"  # llava_onevision
    # qwen2_vl, qwen2_5_vl: the processor's pixel bounds and the image sizes (height, width) compiled by default
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    image_sizes: tuple = ()
    # Qwen presets: a tokenizer whose merges make common English words one token (bench presets: prompts
    # as long as with the checkpoint's own vocabulary) instead of one token per byte (tests)
    word_tokenizer: bool = False

    @property
    def builtin(self) -> bool:
        return self.hub_id is None


_CLIP_336 = dict(image_size=336, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5)
_SIGLIP_384 = dict(
    image_size=384, patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=False
)
_TOKENIZER_IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=3)
# shared by a family's tiny presets (tests) and by its bench presets (the same ~0.5 B decoder)
_TINY_CLIP = dict(
    _CLIP_336, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, projection_dim=64
)
_BENCH_CLIP = dict(  # CLIP ViT-L/14-336 geometry
    _CLIP_336,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    projection_dim=768,
)
_TINY_DECODER = dict(
    _TOKENIZER_IDS,
    vocab_size=320,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
)
_BENCH_DECODER = dict(
    _TOKENIZER_IDS,
    vocab_size=32064,
    hidden_size=1536,
    intermediate_size=4096,
    num_hidden_layers=14,
    num_attention_heads=12,
    num_key_value_heads=12,
)
# llava-hf/llava-onevision-qwen2-*-ov-hf: every grid of 1..6 x 1..6 crops of 384 px (36 pinpoints)
ONEVISION_PINPOINTS = tuple((384 * h, 384 * w) for h in range(1, 7) for w in range(1, 7))

_QWEN_VISION_3B = dict(  # Qwen2.5-VL-3B's ViT (its out_hidden_size follows the decoder)
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    hidden_act="silu",
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    tokens_per_second=2,
)
_QWEN2_VL_TINY_VISION = dict(  # Qwen2-VL's ViT layout (no windows, LayerNorm, quick_gelu MLP), tiny
    depth=3,
    embed_dim=48,
    mlp_ratio=4,
    num_heads=3,
    hidden_act="quick_gelu",
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
)

_QWEN_TINY_DECODER = dict(  # the Qwen tiny presets' 4-layer Qwen2 with M-RoPE (head_dim 16: sections 2+3+3)
    vocab_size=320,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
    tie_word_embeddings=False,
)

PRESETS: dict[str, Preset] = {
    "llava": Preset("llava", "LLaVA-1.5-7B from the hub (needs network or a local cache)", hub_id=LLAVA_15_7B),
    "llava-tiny": Preset(
        "llava-tiny",
        "tiny random LLaVA (CLIP 336/14 geometry, 576 patches; 3 ViT layers; 4-layer Llama) for tests",
        vision=_TINY_CLIP,
        text=dict(
            _TINY_DECODER,
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
        vision=_TINY_CLIP,
        text=dict(
            _TINY_DECODER,
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
        vision=_BENCH_CLIP,
        text=dict(
            _BENCH_DECODER,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
        ),
        initializer_range=0.02,
        attention_gain=3.0,
    ),
    "llava-next-bench": Preset(
        "llava-next-bench",
        "random LLaVA-NeXT: CLIP ViT-L/14-336 geometry, a 2x2 grid of crops (5 with the base), ~0.5B decoder",
        vision=_BENCH_CLIP,
        text=dict(
            _BENCH_DECODER,
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
    "llava-onevision": Preset(
        "llava-onevision",
        "LLaVA-OneVision Qwen2-0.5B (SigLIP, anyres_max_9) from the hub (needs network or a local cache)",
        hub_id=LLAVA_ONEVISION_05B,
        family="llava_onevision",
    ),
    "llava-onevision-tiny": Preset(
        "llava-onevision-tiny",
        "tiny random LLaVA-OneVision (SigLIP 384/14 crops, 729 patches, no [CLS]; the 0.5B checkpoint's 36 "
        "pinpoints and anyres_max_9; 3 ViT layers; 4-layer Qwen2) for tests",
        vision=dict(_SIGLIP_384, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4),
        text=dict(
            _TINY_DECODER,
            max_position_embeddings=16384,  # unpruned pictures reach ~8.8k image rows
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            tie_word_embeddings=False,
        ),
        initializer_range=0.2,
        # 1, not the CLIP presets' 3: at 3 this SigLIP's attention is so peaked that ONNX Runtime and PyTorch
        # differ by 1e-5 (relative) in fp32 and near-tied DivPrune/VisionZip choices flip somewhere among the
        # 477 crops compile checks (every grid of the 36 pinpoints); at 1 they differ by 6e-7 and agree
        attention_gain=1.0,
        family="llava_onevision",
        text_model="qwen2",
        pinpoints=ONEVISION_PINPOINTS,
    ),
    "llava-onevision-bench": Preset(
        "llava-onevision-bench",
        "random LLaVA-OneVision with the 0.5B checkpoint's geometry: SigLIP so400m (26 layers kept, hidden 1152, "
        "729 patches per 384 px crop), 36 pinpoints, anyres_max_9, Qwen2-0.5B decoder",
        vision=dict(
            _SIGLIP_384, hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16
        ),
        text=dict(
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
            vocab_size=152000,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
        ),
        initializer_range=0.02,
        # 1, not 3: at 3 the 26 random SigLIP layers are so peaked that PyTorch fp32 itself differs from fp64 by
        # 0.11 on features of magnitude 7.6 (no exporter can match such a reference); at 1 by 5e-6
        attention_gain=1.0,
        family="llava_onevision",
        text_model="qwen2",
        pinpoints=ONEVISION_PINPOINTS,
    ),
    "qwen2-vl": Preset(
        "qwen2-vl",
        "Qwen2-VL-2B-Instruct from the hub (needs network or a local cache)",
        hub_id=QWEN2_VL_2B,
        family="qwen2_vl",
    ),
    "qwen2-vl-tiny": Preset(
        "qwen2-vl-tiny",
        "tiny random Qwen2-VL (14 px patches, 2x2 merger, 3 full-attention ViT blocks 48 wide; "
        "4-layer Qwen2 with M-RoPE) for tests",
        vision=_QWEN2_VL_TINY_VISION,
        text=_QWEN_TINY_DECODER,
        initializer_range=0.2,
        attention_gain=1.0,
        family="qwen2_vl",
        text_model="qwen2_vl",
        max_pixels=448 * 448,
        image_sizes=((224, 224), (168, 280)),
    ),
    "qwen2.5-vl": Preset(
        "qwen2.5-vl",
        "Qwen2.5-VL-3B-Instruct from the hub (needs network or a local cache)",
        hub_id=QWEN2_5_VL_3B,
        family="qwen2_5_vl",
    ),
    "qwen2.5-vl-tiny": Preset(
        "qwen2.5-vl-tiny",
        "tiny random Qwen2.5-VL (14 px patches, 2x2 merger, window 112 px, 4 ViT blocks of which 2 full-attention; "
        "4-layer Qwen2 with M-RoPE) for tests",
        vision=dict(
            _QWEN_VISION_3B, depth=4, hidden_size=64, intermediate_size=128, num_heads=4, fullatt_block_indexes=[1, 3]
        ),
        text=_QWEN_TINY_DECODER,
        initializer_range=0.2,
        attention_gain=1.0,
        family="qwen2_5_vl",
        text_model="qwen2_5_vl",
        max_pixels=448 * 448,
        image_sizes=((224, 224), (168, 280), (280, 168)),
    ),
    "qwen2.5-vl-bench": Preset(
        "qwen2.5-vl-bench",
        "random Qwen2.5-VL: the 3B model's ViT (32 blocks, 1280 wide, window attention) at 672x448 and 448x672, "
        "a ~0.5B Qwen2 decoder with M-RoPE",
        vision=_QWEN_VISION_3B,
        text=dict(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]},
            tie_word_embeddings=True,
        ),
        initializer_range=0.02,
        attention_gain=1.0,
        family="qwen2_5_vl",
        text_model="qwen2_5_vl",
        image_sizes=((672, 448), (448, 672)),
        word_tokenizer=True,
    ),
}


def _llava_config(preset: Preset, common: dict, vision):
    import transformers

    config = transformers.LlavaConfig(**common, image_seq_length=(vision.image_size // vision.patch_size) ** 2)
    return config, transformers.LlavaForConditionalGeneration


def _llava_next_config(preset: Preset, common: dict, vision):
    import transformers

    config = transformers.LlavaNextConfig(**common, image_grid_pinpoints=[list(p) for p in preset.pinpoints])
    return config, transformers.LlavaNextForConditionalGeneration


def _llava_onevision_config(preset: Preset, common: dict, vision):
    import transformers

    config = transformers.LlavaOnevisionConfig(
        **dict(common, vision_feature_layer=-1, vision_feature_select_strategy="full"),
        image_grid_pinpoints=[list(p) for p in preset.pinpoints],
        vision_aspect_ratio=preset.vision_aspect_ratio,
        tie_word_embeddings=bool(preset.text.get("tie_word_embeddings", False)),
    )
    return config, transformers.LlavaOnevisionForConditionalGeneration


def _llava_processor(preset: Preset, vision):
    from tpc.models.tiny_processor import build_llava_processor

    return build_llava_processor(vision.image_size, vision.patch_size)


def _llava_next_processor(preset: Preset, vision):
    from tpc.models.tiny_processor import build_llava_next_processor

    return build_llava_next_processor(vision.image_size, vision.patch_size, [list(p) for p in preset.pinpoints])


def _llava_onevision_processor(preset: Preset, vision):
    from tpc.models.tiny_processor import build_llava_onevision_processor

    pinpoints = [list(p) for p in preset.pinpoints]
    return build_llava_onevision_processor(vision.image_size, vision.patch_size, pinpoints, preset.vision_aspect_ratio)


# family -> (vision config class, model config builder, processor builder)
_FAMILY_CONFIGS = {
    "llava": ("CLIPVisionConfig", _llava_config, _llava_processor),
    "llava_next": ("CLIPVisionConfig", _llava_next_config, _llava_next_processor),
    "llava_onevision": ("SiglipVisionConfig", _llava_onevision_config, _llava_onevision_processor),
}
_TEXT_CONFIGS = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config"}


# family -> (config class, model class, processor builder, vision config key of the merged tokens' width)
_QWEN_CLASSES = {
    "qwen2_vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration", "build_qwen2_vl_processor", "hidden_size"),
    "qwen2_5_vl": (
        "Qwen2_5_VLConfig",
        "Qwen2_5_VLForConditionalGeneration",
        "build_qwen2_5_vl_processor",
        "out_hidden_size",
    ),
}


def _build_qwen(preset: Preset):
    """A seeded random ``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VLForConditionalGeneration`` (the
    preset's family) and its in-code processor."""
    import torch
    import transformers

    from tpc.models import tiny_processor as tp

    text = dict(
        preset.text,
        bos_token_id=None,
        eos_token_id=tp.QWEN_EOS_ID,
        pad_token_id=tp.QWEN_PAD_ID,
        initializer_range=preset.initializer_range,
    )
    config_class, model_class, processor_builder, out_key = _QWEN_CLASSES[preset.family]
    vision = dict(preset.vision, initializer_range=preset.initializer_range)
    vision[out_key] = preset.text["hidden_size"]
    config = getattr(transformers, config_class)(
        vision_config=vision,
        text_config=text,
        image_token_id=tp.QWEN_IMAGE_TOKEN_ID,
        video_token_id=tp.QWEN_VIDEO_TOKEN_ID,
        vision_start_token_id=tp.QWEN_VISION_START_ID,
        vision_end_token_id=tp.QWEN_VISION_END_ID,
        tie_word_embeddings=bool(preset.text.get("tie_word_embeddings", False)),
    )
    config._attn_implementation = "sdpa"
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(preset.seed)
    try:
        model = getattr(transformers, model_class)(config)
        if preset.attention_gain != 1.0:
            with torch.no_grad():
                for block in model.model.visual.blocks:
                    width = block.attn.qkv.in_features
                    block.attn.qkv.weight[: 2 * width].mul_(preset.attention_gain)
    finally:
        torch.random.set_rng_state(generator_state)
    model.eval()
    processor = getattr(tp, processor_builder)(
        patch_size=preset.vision["patch_size"],
        merge_size=preset.vision["spatial_merge_size"],
        min_pixels=preset.min_pixels,
        max_pixels=preset.max_pixels,
        words=preset.word_tokenizer,
    )
    return model, processor


def build_preset(preset: Preset):
    """Instantiate a built-in preset: (model, processor) of its family, seeded random weights."""
    import torch
    import transformers

    if preset.family in _QWEN_CLASSES:
        return _build_qwen(preset)

    from tpc.models.tiny_processor import IMAGE_TOKEN_ID

    vision_class, model_config, processor_builder = _FAMILY_CONFIGS[preset.family]
    vision = getattr(transformers, vision_class)(**preset.vision, initializer_range=preset.initializer_range)
    text_config_class = getattr(transformers, _TEXT_CONFIGS[preset.text_model])
    text = text_config_class(**preset.text, initializer_range=preset.initializer_range)
    common = dict(
        vision_config=vision,
        text_config=text,
        image_token_index=IMAGE_TOKEN_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    config, model_class = model_config(preset, common, vision)
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
    return model, processor_builder(preset, vision)
