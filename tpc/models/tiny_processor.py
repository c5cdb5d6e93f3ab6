"""LLaVA processors (tokenizer + image processor + chat template) built in code.

The presets have no files to download, so their tokenizer is made here: a byte-level
BPE with the 256 byte symbols as its base vocabulary (it can encode any text), no
merges, and the special tokens LLaVA-1.5 uses. The results are a real ``LlavaProcessor``
(CLIP preprocessing, LLaVA-1.5's template) and a real ``LlavaNextProcessor`` (anyres
preprocessing and the Mistral template of llava-hf/llava-v1.6-mistral-7b-hf) that
``save_pretrained`` writes and ``AutoProcessor`` reloads, and an ``OnevisionProcessor``
(``LlavaOnevisionImageProcessorPil`` and the ChatML template of llava-hf/llava-onevision-*;
transformers' own processor needs torchvision) whose saved files ``AutoProcessor`` reloads
where torchvision is installed and ``tpc.models.onevision_processor.load_parts`` everywhere.
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
