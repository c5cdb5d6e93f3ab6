"""Qwen2-VL / Qwen2.5-VL's processor, assembled from its parts (no video processor, so no torchvision).

transformers' ``Qwen2_5_VLProcessor`` and ``Qwen2VLProcessor`` insist on a video processor, which needs
torchvision; without it ``AutoProcessor.from_pretrained`` fails (PLATFORM.md). tpc only reads images, so
``QwenVLProcessor`` holds the image processor (``Qwen2VLImageProcessorPil`` or whatever
``AutoImageProcessor`` gives, wrapped in ``QwenImageProcessor`` for ``preprocess_grid`` / ``grid_of``),
the tokenizer and the chat template, and does what transformers' processor does with images and text:
``pixel_values`` ``[sum(t*h*w), 3*2*14*14]`` and ``image_grid_thw``, every ``<|image_pad|>`` expanded to
``t*h*w / merge**2`` copies, and ``mm_token_type_ids`` (1 at image tokens, 2 at video tokens).
``save_pretrained`` writes the files transformers' processor writes (``processor_config.json`` with the
image processor and a default video processor, the tokenizer files, ``chat_template.jinja``), so the saved
directory loads with ``AutoProcessor`` where torchvision is installed, with ``load_parts`` here, and without
transformers in ``tpc run`` (``tpc.runtimes.light_processor``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tpc.models.onevision_processor import PROCESSOR_CONFIG, TEMPLATE_FILE, _plain, _read_optional, chat_template_of

PROCESSOR_CLASSES = ("Qwen2_5_VLProcessor", "Qwen2VLProcessor")
# config.model_type -> processor_class
MODEL_TYPES = {"qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen2_vl": "Qwen2VLProcessor"}
IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"


class QwenImageProcessor:
    """transformers' Qwen2-VL image processor with the light one's extras: ``grid_of``, ``image_token_count``
    and ``preprocess_grid`` (per-image patches, optionally forced onto a size first). Anything else is the
    wrapped processor's (``to_dict``, ``size``, ``merge_size``...)."""

    def __init__(self, processor):
        self.processor = processor

    def __getattr__(self, name):
        if name.startswith("__") or name == "processor":
            raise AttributeError(name)
        return getattr(self.processor, name)

    def _size(self, key: str) -> int:
        size = self.processor.size
        value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        return int(value)

    @property
    def min_pixels(self) -> int:
        return self._size("shortest_edge")

    @property
    def max_pixels(self) -> int:
        return self._size("longest_edge")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        from tpc.models.qwen_geometry import smart_resize

        factor = self.processor.patch_size * self.processor.merge_size
        return smart_resize(height, width, factor, self.min_pixels, self.max_pixels)

    def grid_of(self, image_hw) -> tuple[int, int]:
        """(grid_h, grid_w) in patches of an image of ``image_hw`` (height, width) pixels."""
        height, width = (int(v) for v in image_hw)
        if self.processor.do_resize:
            height, width = self.output_size(height, width)
        return height // self.processor.patch_size, width // self.processor.patch_size

    def image_token_count(self, image_hw) -> int:
        grid_h, grid_w = self.grid_of(image_hw)
        return grid_h * grid_w // self.processor.merge_size**2

    def preprocess_grid(self, images, sizes=None) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
        """Each image's patches ``[L_i, 3 * temporal * patch**2]`` float32 and its ``(grid_h, grid_w)``;
        ``sizes`` as ``QwenVLImageProcessor.preprocess_grid`` (resize with PIL bicubic first)."""
        from tpc.models.light_image_processors import _forced, _split

        images = list(images) if isinstance(images, (list, tuple)) else [images]
        images = _forced(images, sizes, self.output_size if self.processor.do_resize else None)
        out = self.processor(images, return_tensors=None)
        return _split(out["pixel_values"], out["image_grid_thw"])

    def __call__(self, images, return_tensors: str | None = "np", **kwargs):
        return self.processor(images, return_tensors=return_tensors, **kwargs)

    def __repr__(self) -> str:
        return f"QwenImageProcessor({self.processor!r})"


class QwenVLProcessor:
    """What tpc uses of ``Qwen2_5_VLProcessor`` / ``Qwen2VLProcessor``: images and text in, model inputs out
    (no videos). ``processor_class`` is the one ``save_pretrained`` records."""

    def __init__(self, image_processor, tokenizer, chat_template: str | None = None, *, processor_class=None):
        processor_class = processor_class or PROCESSOR_CLASSES[0]
        if processor_class not in PROCESSOR_CLASSES:
            raise ValueError(f"processor_class {processor_class!r} (expected one of {', '.join(PROCESSOR_CLASSES)})")
        if not hasattr(image_processor, "preprocess_grid"):
            image_processor = QwenImageProcessor(image_processor)
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.processor_class = processor_class
        # as transformers' processor: the tokenizer's own image/video tokens when it names them
        self.image_token = IMAGE_TOKEN if not hasattr(tokenizer, "image_token") else tokenizer.image_token
        self.video_token = VIDEO_TOKEN if not hasattr(tokenizer, "video_token") else tokenizer.video_token
        self.image_token_id = (
            tokenizer.image_token_id
            if getattr(tokenizer, "image_token_id", None)
            else tokenizer.convert_tokens_to_ids(self.image_token)
        )
        self.video_token_id = (
            tokenizer.video_token_id
            if getattr(tokenizer, "video_token_id", None)
            else tokenizer.convert_tokens_to_ids(self.video_token)
        )
        if self.image_token_id is None or tokenizer.convert_ids_to_tokens(self.image_token_id) != self.image_token:
            raise ValueError(f"the tokenizer has no {self.image_token} token")

    @classmethod
    def from_pretrained(cls, location, config=None) -> QwenVLProcessor:
        return load_parts(location, config)

    @property
    def merge_size(self) -> int:
        return int(self.image_processor.merge_size)

    def image_token_count(self, image_hw) -> int:
        """The ``<|image_pad|>`` placeholders for one picture of ``image_hw`` (grid_h * grid_w / merge**2)."""
        return self.image_processor.image_token_count(image_hw)

    def apply_chat_template(self, conversation, add_generation_prompt: bool = False, tokenize: bool = False, **kwargs):
        """The chat template rendered as transformers' ``ProcessorMixin.apply_chat_template`` renders it; with
        ``tokenize=True`` the token ids of that text (``<|image_pad|>`` left as one token: expand it with
        ``__call__``)."""
        from tpc.models.onevision_processor import render_chat

        return render_chat(self, conversation, add_generation_prompt, tokenize, **kwargs)

    def __call__(self, images=None, text=None, return_tensors: str | None = "pt", **kwargs):
        """``pixel_values`` and ``image_grid_thw`` of ``images``, and the token ids of ``text`` with every
        ``<|image_pad|>`` expanded to its picture's placeholder count (the pictures in order) and
        ``mm_token_type_ids``, as ``Qwen2_5_VLProcessor`` returns them."""
        from transformers import BatchFeature

        if images is None and text is None:
            raise ValueError(f"You need to provide at least one input to call {type(self).__name__}")
        data: dict[str, Any] = {}
        counts: list[int] = []
        if images is not None:
            images = list(images) if isinstance(images, (list, tuple)) else [images]
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            if not all(isinstance(t, str) for t in texts):
                raise ValueError("`text` must be a string or list of strings.")
            found = sum(t.count(self.image_token) for t in texts)
            if images is not None and found != len(images):
                raise ValueError(
                    f"The total number of {self.image_token} tokens in the prompts should be the same as the number"
                    f" of images passed. Found total {found} {self.image_token} tokens and {len(images)} images."
                )
            if images is None and found:
                raise ValueError(f"Found {found} {self.image_token} tokens in the text but no images were passed.")
        if images is not None:
            pixels = self.image_processor(images, return_tensors=None)
            pixel_values = np.asarray(pixels["pixel_values"], dtype=np.float32)
            grid_thw = np.asarray(pixels["image_grid_thw"], dtype=np.int64)
            counts = [int(np.prod(g)) // self.merge_size**2 for g in grid_thw]
            images_data = {"pixel_values": pixel_values, "image_grid_thw": grid_thw}
        if text is not None:
            remaining = iter(counts)
            expanded = []
            for piece in texts:
                parts = piece.split(self.image_token)
                rebuilt = parts[0]
                for rest in parts[1:]:
                    rebuilt += self.image_token * next(remaining) + rest
                expanded.append(rebuilt)
            encoded = self.tokenizer(expanded, **kwargs)
            data.update(encoded)
            data["mm_token_type_ids"] = [self._token_types(ids) for ids in encoded["input_ids"]]
        if images is not None:
            data.update(images_data)
        return BatchFeature(data, tensor_type=return_tensors)

    def _token_types(self, ids) -> list[int]:
        """0 for text, 1 at image tokens, 2 at video tokens (transformers' ``create_mm_token_type_ids``)."""
        ids = np.asarray(ids)
        types = np.zeros_like(ids)
        types[ids == self.image_token_id] = 1
        if self.video_token_id is not None:
            types[ids == self.video_token_id] = 2
        return types.tolist()

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        image = {k: v for k, v in self.image_processor.to_dict().items() if v is not None}
        image.pop("processor_class", None)
        image.setdefault("image_processor_type", "Qwen2VLImageProcessor")
        image = _plain(image)
        # transformers' processor needs a video processor to load: Qwen2VLVideoProcessor's defaults, with the
        # image processor's patch geometry and normalisation
        video = {key: image[key] for key in ("image_mean", "image_std") if key in image}
        for key, default in (("patch_size", 14), ("temporal_patch_size", 2), ("merge_size", 2)):
            video[key] = int(getattr(self.image_processor, key, default))
        video["video_processor_type"] = "Qwen2VLVideoProcessor"
        return {"image_processor": image, "processor_class": self.processor_class, "video_processor": video}

    def save_pretrained(self, directory) -> list[str]:
        """Write the processor as transformers' ``Qwen2_5_VLProcessor.save_pretrained`` lays it out."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(directory))
        config_path = directory / "tokenizer_config.json"
        if config_path.is_file():  # the tokenizer belongs to this processor (as ProcessorMixin records it)
            config = json.loads(config_path.read_text(encoding="utf-8"))
            config["processor_class"] = self.processor_class
            config.pop("chat_template", None)
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        (directory / "chat_template.json").unlink(missing_ok=True)
        if self.chat_template:
            (directory / TEMPLATE_FILE).write_text(self.chat_template, encoding="utf-8")
        (directory / PROCESSOR_CONFIG).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return sorted(str(p) for p in directory.iterdir())


def _processor_class(location: str, processor_config: dict, config) -> str:
    """The model's family when ``config`` names one, else what the saved files record, else Qwen2.5-VL."""
    kind = MODEL_TYPES.get(getattr(config, "model_type", None))
    if kind is None:
        kind = processor_config.get("processor_class")
    if kind is None:
        text = _read_optional(location, "preprocessor_config.json")
        kind = json.loads(text).get("processor_class") if text else None
    return kind if kind in PROCESSOR_CLASSES else PROCESSOR_CLASSES[0]


def load_parts(location: str | Path, config=None) -> QwenVLProcessor:
    """The processor of a checkpoint (directory or hub id) from its parts, with transformers' image processor
    (PIL backend: no torchvision) and tokenizer. ``config``: the model's; its vision geometry (patch, merge
    and temporal patch sizes) must be the image processor's, and its ``model_type`` names the family."""
    from transformers import AutoImageProcessor, AutoTokenizer

    location = str(location)
    text = _read_optional(location, PROCESSOR_CONFIG)
    processor_config = json.loads(text) if text else {}
    image_processor = AutoImageProcessor.from_pretrained(location, backend="pil")  # the PIL variant, as tpc run
    tokenizer = AutoTokenizer.from_pretrained(location)
    if config is not None:
        vision = getattr(config, "vision_config", None)
        for model_key, processor_key in (
            ("patch_size", "patch_size"),
            ("spatial_merge_size", "merge_size"),
            ("temporal_patch_size", "temporal_patch_size"),
        ):
            model_value = getattr(vision, model_key, None)
            processor_value = getattr(image_processor, processor_key, None)
            if model_value is not None and processor_value is not None and int(model_value) != int(processor_value):
                raise ValueError(
                    f"{location}: the image processor's {processor_key} {processor_value} is not the vision "
                    f"model's {model_key} {model_value}"
                )
    return QwenVLProcessor(
        image_processor,
        tokenizer,
        chat_template_of(location, processor_config, tokenizer),
        processor_class=_processor_class(location, processor_config, config),
    )
