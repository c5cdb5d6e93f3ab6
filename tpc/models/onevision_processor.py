"""LLaVA-OneVision's processor, assembled from its parts (no video processor, so no torchvision).

transformers' ``LlavaOnevisionProcessor`` insists on a video processor, which needs torchvision;
without it ``AutoProcessor.from_pretrained`` fails (PLATFORM.md). tpc only reads images, so
``OnevisionProcessor`` holds the image processor (``LlavaOnevisionImageProcessorPil`` or whatever
``AutoImageProcessor`` gives), the tokenizer and the chat template, and computes the number of
``<image>`` placeholders from the model's geometry (``tpc.models.anyres.onevision_token_count``:
anyres crops, unpad, ``anyres_max_N`` downsampling, one newline per row), which is what
``LlavaOnevisionProcessor`` writes. ``save_pretrained`` writes the files transformers' processor
writes (``processor_config.json`` with the image processor, the tokenizer files,
``chat_template.jinja``), so the saved directory loads with ``AutoProcessor`` where torchvision is
installed, with ``load_parts`` here, and without transformers in ``tpc run``
(``tpc.runtimes.light_processor``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROCESSOR_CLASS = "LlavaOnevisionProcessor"
PROCESSOR_CONFIG = "processor_config.json"
TEMPLATE_FILE = "chat_template.jinja"


class OnevisionProcessor:
    """What tpc uses of ``LlavaOnevisionProcessor``: images and text in, model inputs out (no videos)."""

    def __init__(
        self,
        image_processor,
        tokenizer,
        chat_template: str | None = None,
        *,
        num_image_tokens: int = 729,
        vision_feature_select_strategy: str = "full",
        vision_aspect_ratio: str = "anyres_max_9",
        image_token: str = "<image>",
        video_token: str = "<video>",
    ):
        from tpc.models.anyres import max_crops_of

        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.num_image_tokens = int(num_image_tokens)
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.vision_aspect_ratio = vision_aspect_ratio
        self.max_crops = max_crops_of(vision_aspect_ratio)
        self.image_token = image_token
        self.video_token = video_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        side = int(round(self.num_image_tokens**0.5))
        if side * side != self.num_image_tokens:
            raise ValueError(f"num_image_tokens {num_image_tokens} is not a square patch grid")
        self.tokens_per_side = side

    @property
    def crop_size(self) -> int:
        size = self.image_processor.size
        get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
        return int(get("height") or get("shortest_edge"))

    def image_token_count(self, image_hw) -> int:
        """The ``<image>`` placeholders for one picture of ``image_hw`` (what ``pack_image_features`` produces)."""
        from tpc.models.anyres import onevision_token_count

        count = onevision_token_count(
            image_hw,
            [list(p) for p in self.image_processor.image_grid_pinpoints],
            self.crop_size,
            self.tokens_per_side,
            self.max_crops,
        )
        return count - 1 if self.vision_feature_select_strategy == "default" else count

    def apply_chat_template(self, conversation, add_generation_prompt: bool = False, tokenize: bool = False, **kwargs):
        """The chat template rendered as transformers' ``ProcessorMixin.apply_chat_template`` renders it; with
        ``tokenize=True`` the token ids of that text (``<image>`` left as one token: expand it with ``__call__``)."""
        return render_chat(self, conversation, add_generation_prompt, tokenize, **kwargs)

    def __call__(self, images=None, text=None, return_tensors: str | None = "pt", **kwargs) -> dict[str, Any]:
        """Pixel values and image sizes of ``images``, token ids of ``text`` with every ``<image>`` expanded to
        its picture's placeholder count (the pictures in order), as ``LlavaOnevisionProcessor`` returns them."""
        out: dict[str, Any] = {}
        sizes, several = [], []
        if images is not None:
            images = list(images) if isinstance(images, (list, tuple)) else [images]
            pixels = self.image_processor(images, return_tensors=return_tensors)
            out.update(pixels)
            sizes = [tuple(int(v) for v in s) for s in pixels["image_sizes"]]
            several = [int(n) > 1 for n in pixels.get("batch_num_images", [1] * len(sizes)) for _ in range(int(n))]
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            # a picture of a sample with several (a nested list of images) is one square crop + a newline
            counts = iter(
                self.num_image_tokens + 1 - (self.vision_feature_select_strategy == "default")
                if many
                else self.image_token_count(s)
                for s, many in zip(sizes, several, strict=True)
            )
            expanded = []
            for piece in texts:
                parts = piece.split(self.image_token)
                rebuilt = parts[0]
                for rest in parts[1:]:
                    try:
                        rebuilt += self.image_token * next(counts) + rest
                    except StopIteration:
                        raise ValueError("more <image> tokens in the text than images") from None
                expanded.append(rebuilt)
            out.update(self.tokenizer(expanded, return_tensors=return_tensors, **kwargs))
        return out

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        image = {k: v for k, v in self.image_processor.to_dict().items() if v is not None}
        image.pop("processor_class", None)
        image["image_processor_type"] = "LlavaOnevisionImageProcessor"
        return {
            "image_processor": _plain(image),
            "image_token": self.image_token,
            "num_image_tokens": self.num_image_tokens,
            "processor_class": PROCESSOR_CLASS,
            "video_token": self.video_token,
            "vision_aspect_ratio": self.vision_aspect_ratio,
            "vision_feature_select_strategy": self.vision_feature_select_strategy,
        }

    def save_pretrained(self, directory) -> list[str]:
        """Write the processor as transformers' ``LlavaOnevisionProcessor.save_pretrained`` lays it out."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(directory))
        config_path = directory / "tokenizer_config.json"
        if config_path.is_file():  # the tokenizer belongs to this processor (as ProcessorMixin records it)
            config = json.loads(config_path.read_text(encoding="utf-8"))
            config["processor_class"] = PROCESSOR_CLASS
            config.pop("chat_template", None)
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        for stale in ("chat_template.json",):
            (directory / stale).unlink(missing_ok=True)
        if self.chat_template:
            (directory / TEMPLATE_FILE).write_text(self.chat_template, encoding="utf-8")
        (directory / PROCESSOR_CONFIG).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return sorted(str(p) for p in directory.iterdir())


def _plain(value):
    """JSON-ready copy (tuples as lists, enums as their values)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "value") and not isinstance(value, (str, int, float, bool)):
        return value.value
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def _read_optional(location: str, name: str) -> str | None:
    """A file of a local directory or a hub repository (cached), or None when it has none."""
    path = Path(location) / name
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if Path(location).is_dir():
        return None
    from transformers.utils import cached_file

    found = cached_file(location, name, _raise_exceptions_for_missing_entries=False)
    return Path(found).read_text(encoding="utf-8") if found else None


def chat_template_of(location: str, processor_config: dict, tokenizer=None) -> str | None:
    """The chat template where transformers' processor looks for it, then the tokenizer's own."""
    source = processor_config.get("chat_template")
    if source is None:
        text = _read_optional(location, "chat_template.json")
        if text is not None:
            source = json.loads(text).get("chat_template")
    if source is None:
        source = _read_optional(location, TEMPLATE_FILE)
    if source is None and tokenizer is not None:
        source = getattr(tokenizer, "chat_template", None)
    if isinstance(source, dict):
        source = source.get("default")
    return source


def load_parts(location: str | Path, config=None) -> OnevisionProcessor:
    """The processor of a checkpoint (directory or hub id) from its parts, with transformers' image
    processor (PIL backend when torchvision is missing) and tokenizer. ``config``: the model's, whose
    geometry gives the placeholder count when ``processor_config.json`` does not."""
    from transformers import AutoImageProcessor, AutoTokenizer

    location = str(location)
    text = _read_optional(location, PROCESSOR_CONFIG)
    processor_config = json.loads(text) if text else {}
    image_processor = AutoImageProcessor.from_pretrained(location, backend="pil")  # the PIL variant, as tpc run
    tokenizer = AutoTokenizer.from_pretrained(location)
    geometry: dict[str, Any] = {}
    if config is not None:
        vision = config.vision_config
        geometry = {
            "num_image_tokens": (vision.image_size // vision.patch_size) ** 2,
            "vision_feature_select_strategy": config.vision_feature_select_strategy,
            "vision_aspect_ratio": config.vision_aspect_ratio,
        }
    settings = {
        key: processor_config.get(key, geometry.get(key, default))
        for key, default in (
            ("num_image_tokens", 729),
            ("vision_feature_select_strategy", "full"),
            ("vision_aspect_ratio", "anyres_max_9"),
            ("image_token", "<image>"),
            ("video_token", "<video>"),
        )
    }
    settings.update(geometry)  # the model's own geometry wins (it is what the features are)
    return OnevisionProcessor(
        image_processor, tokenizer, chat_template_of(location, processor_config, tokenizer), **settings
    )


def render_chat(processor, conversation, add_generation_prompt: bool = False, tokenize: bool = False, **kwargs):
    """``processor.chat_template`` rendered as transformers' ``ProcessorMixin.apply_chat_template`` renders it
    (one conversation or a batch); ``tokenize=True``: the token ids of that text, image tokens left single.
    Shared by the processors tpc assembles from their parts (LLaVA-OneVision, Qwen)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    if not processor.chat_template:
        raise ValueError("Cannot use apply_chat_template because this processor does not have a chat template.")
    batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
    conversations = conversation if batched else [conversation]
    variables = {**processor.tokenizer.special_tokens_map, **kwargs}
    prompts, _ = render_jinja_template(
        conversations=conversations,
        chat_template=processor.chat_template,
        add_generation_prompt=add_generation_prompt,
        **variables,
    )
    if tokenize:
        prompts = [processor.tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    return prompts if batched else prompts[0]
