"""LLaVA processors (tokenizer + image processor + chat template) built in code.

The presets have no files to download, so their tokenizer is made here: a byte-level
BPE with the 256 byte symbols as its base vocabulary (it can encode any text), no
merges, and the special tokens LLaVA-1.5 uses. The results are a real ``LlavaProcessor``
(CLIP preprocessing, LLaVA-1.5's template) and a real ``LlavaNextProcessor`` (anyres
preprocessing and the Mistral template of llava-hf/llava-v1.6-mistral-7b-hf) that
``save_pretrained`` writes and ``AutoProcessor`` reloads, and an ``OnevisionProcessor``
(``LlavaOnevisionImageProcessorPil`` and the ChatML template of llava-hf/llava-onevision-*;
transformers' own processor needs torchvision) whose saved files ``AutoProcessor`` reloads
where torchvision is installed and ``tpc.models.onevision_processor.load_parts`` everywhere, and a
``QwenVLProcessor`` for Qwen2-VL / Qwen2.5-VL (``Qwen2VLImageProcessorPil``, Qwen's ChatML template and a
byte tokenizer with Qwen's special tokens), reloaded the same ways (``tpc.models.qwen_processor.load_parts``).
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

# The chat template of llava-hf/llava-1.5-*-hf: "USER: <image>\n... ASSISTANT:".
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}"
    "{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% if message['role'] != 'assistant' %}{{ content['text'] + ' '}}{% else %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endif %}"
    "{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# The chat template of llava-hf/llava-v1.6-mistral-7b-hf: "[INST] <image>\n... [/INST]" (no generation prompt:
# the user turn ends with " [/INST]").
LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{{ '[INST] ' }}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}"
    "{% endfor %}"
    "{# Render all text next #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}"
    "{% endfor %}"
    "{{' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'][0]['text'] + '</s> '}}"
    "{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}"
    "{% endfor %}"
)
# image_grid_pinpoints of llava-hf/llava-v1.6-*-hf, (height, width)
LLAVA_NEXT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
IMAGE_TOKEN_ID = SPECIAL_TOKENS.index("<image>")


def build_byte_tokenizer():
    """A fast tokenizer: ids 0-4 are SPECIAL_TOKENS, then the 256 byte symbols."""
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(alphabet):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        add_bos_token=True,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer


def build_llava_processor(image_size: int = 336, patch_size: int = 14):
    """A ``LlavaProcessor`` with CLIP preprocessing at ``image_size`` and the LLaVA template."""
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    from transformers import LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        do_resize=True,
        do_normalize=True,
        do_convert_rgb=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_byte_tokenizer(),
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )


def build_llava_next_processor(image_size: int = 336, patch_size: int = 14, pinpoints=None):
    """A ``LlavaNextProcessor`` configured like llava-hf/llava-v1.6-mistral-7b-hf at ``image_size``.

    ``LlavaNextImageProcessorPil`` (CLIP mean/std, shortest edge and crop ``image_size``, bicubic,
    ``image_grid_pinpoints`` = ``pinpoints``, default: the v1.6 ones, which assume 336), the
    ``"default"`` feature strategy with one [CLS] token, and the Mistral ``[INST]`` template.
    """
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    from tpc.models.anyres import check_pinpoints

    pinpoints = check_pinpoints(LLAVA_NEXT_PINPOINTS if pinpoints is None else pinpoints, image_size)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
        resample=3,  # bicubic
        do_resize=True,
        do_center_crop=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        do_convert_rgb=True,
        do_pad=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=build_byte_tokenizer(),
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_NEXT_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )


# The chat template of llava-hf/llava-onevision-qwen2-*-ov-hf (Qwen's ChatML turns; the image before the text).
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + ' '}}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}"
    "{% endfor %}"
    "{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}"
    "{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] }}"
    "{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}"
    "{% endfor %}"
    "{% endif %}"
    "{{'<|im_end|>'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# image_grid_pinpoints of llava-hf/llava-onevision-qwen2-*-ov-hf: every grid of 1..6 x 1..6 crops of 384 px
LLAVA_ONEVISION_PINPOINTS = tuple((384 * h, 384 * w) for h in range(1, 7) for w in range(1, 7))
SIGLIP_MEAN = [0.5, 0.5, 0.5]
SIGLIP_STD = [0.5, 0.5, 0.5]


def build_llava_onevision_processor(
    image_size: int = 384, patch_size: int = 14, pinpoints=None, vision_aspect_ratio: str = "anyres_max_9"
):
    """An ``OnevisionProcessor`` configured like llava-hf/llava-onevision-qwen2-0.5b-ov-hf at ``image_size``.

    ``LlavaOnevisionImageProcessorPil`` (SigLIP mean/std 0.5, crops of ``image_size`` resized to
    ``height x width``, bicubic, ``image_grid_pinpoints`` = ``pinpoints``, default: the checkpoint's 36),
    the ``"full"`` feature strategy (SigLIP has no [CLS]), ``anyres_max_9`` and the ChatML template. The
    byte tokenizer of the other presets (the template's ``<|im_start|>`` is plain text to it).
    """
    from transformers import LlavaOnevisionImageProcessorPil

    from tpc.models.anyres import check_pinpoints
    from tpc.models.onevision_processor import OnevisionProcessor

    pinpoints = check_pinpoints(LLAVA_ONEVISION_PINPOINTS if pinpoints is None else pinpoints, image_size)
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
        resample=3,  # bicubic
        do_resize=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        do_convert_rgb=True,
        do_pad=True,
        image_mean=SIGLIP_MEAN,
        image_std=SIGLIP_STD,
    )
    return OnevisionProcessor(
        image_processor,
        build_byte_tokenizer(),
        LLAVA_ONEVISION_CHAT_TEMPLATE,
        num_image_tokens=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=vision_aspect_ratio,
    )


# --------------------------------------------------------------------------- Qwen2-VL / Qwen2.5-VL

# Qwen's special tokens, ids 0-6 in this order, then the 256 byte symbols (263 ids in all).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN_PAD_ID = QWEN_SPECIAL_TOKENS.index("<|endoftext|>")
QWEN_EOS_ID = QWEN_SPECIAL_TOKENS.index("<|im_end|>")
QWEN_VISION_START_ID = QWEN_SPECIAL_TOKENS.index("<|vision_start|>")
QWEN_VISION_END_ID = QWEN_SPECIAL_TOKENS.index("<|vision_end|>")
QWEN_IMAGE_TOKEN_ID = QWEN_SPECIAL_TOKENS.index("<|image_pad|>")
QWEN_VIDEO_TOKEN_ID = QWEN_SPECIAL_TOKENS.index("<|video_pad|>")

# The chat template of Qwen/Qwen2.5-VL-*-Instruct (and Qwen/Qwen2-VL-*-Instruct): ChatML with a default system
# turn, each image as <|vision_start|><|image_pad|><|vision_end|> where it stands among the texts.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_qwen_byte_tokenizer(words: bool = False):
    """A fast tokenizer for the Qwen presets: ids 0-6 are QWEN_SPECIAL_TOKENS, then the 256 byte symbols.

    Like Qwen2's tokenizer: no BOS, EOS ``<|im_end|>``, padding with ``<|endoftext|>`` on the left, no
    unknown token (byte-level BPE encodes any text); the other special tokens are extra special tokens.
    ``words``: BPE merges make common English words single tokens (``tpc.models.word_tokenizer``), so a
    prompt has about as many text tokens as with Qwen's own vocabulary (the bench presets).
    """
    from transformers import PreTrainedTokenizerFast

    if words:
        from tpc.models.word_tokenizer import build_word_tokenizer

        backend = build_word_tokenizer(QWEN_SPECIAL_TOKENS)
    else:
        vocab = {tok: i for i, tok in enumerate(QWEN_SPECIAL_TOKENS)}
        for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
            vocab[symbol] = len(vocab)
        backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])})
    return tokenizer


def build_qwen2_5_vl_processor(
    patch_size: int = 14,
    merge_size: int = 2,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    processor_class: str = "Qwen2_5_VLProcessor",
    words: bool = False,
):
    """A ``QwenVLProcessor`` configured like Qwen/Qwen2.5-VL-*-Instruct (``processor_class``
    "Qwen2VLProcessor": like Qwen/Qwen2-VL-*-Instruct, the same processing and template).

    ``Qwen2VLImageProcessorPil`` (CLIP mean/std, bicubic, temporal patch 2, ``patch_size``, ``merge_size``;
    ``min_pixels`` / ``max_pixels``, default 4 and 1280 merge units of ``(patch_size * merge_size)**2``
    pixels, transformers' defaults at patch 14), the Qwen byte tokenizer (QWEN_SPECIAL_TOKENS) and Qwen's
    ChatML template (``words``: the word-level merges of ``build_qwen_byte_tokenizer``). transformers' own
    processor needs torchvision.
    """
    from transformers import Qwen2VLImageProcessorPil

    from tpc.models.qwen_processor import QwenVLProcessor

    unit = (patch_size * merge_size) ** 2
    image_processor = Qwen2VLImageProcessorPil(
        size={
            "shortest_edge": 4 * unit if min_pixels is None else int(min_pixels),
            "longest_edge": 1280 * unit if max_pixels is None else int(max_pixels),
        },
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=2,
        resample=3,  # bicubic
        do_resize=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        do_convert_rgb=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return QwenVLProcessor(
        image_processor,
        build_qwen_byte_tokenizer(words),
        QWEN2_5_VL_CHAT_TEMPLATE,
        processor_class=processor_class,
    )


def build_qwen2_vl_processor(
    patch_size: int = 14, merge_size: int = 2, min_pixels=None, max_pixels=None, words: bool = False
):
    """``build_qwen2_5_vl_processor`` saved as a ``Qwen2VLProcessor`` (Qwen2-VL's processing is the same)."""
    return build_qwen2_5_vl_processor(patch_size, merge_size, min_pixels, max_pixels, "Qwen2VLProcessor", words)
