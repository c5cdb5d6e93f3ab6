"""Turn (image, prompt) pairs into model inputs with the checkpoint's own processor.

The prompt is wrapped by the checkpoint's chat template as one user turn holding the
image and then the text, with the generation prompt added (what transformers'
image-text-to-text pipeline does); the single ``<image>`` token is then expanded to
the artifact's K kept-token placeholders. Batches are left-padded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tpc.errors import UsageError
from tpc.runtimes.image_layout import Crops

FALLBACK_TEMPLATE = "USER: {image}{text} ASSISTANT:"  # LLaVA-1.5's format, for checkpoints without a template


@dataclass
class PromptBatch:
    input_ids: np.ndarray  # [B, S] int64, left-padded
    attention_mask: np.ndarray  # [B, S] int64
    pixel_values: np.ndarray | None  # [B, 3, H, W] float32, or None for text-only prompts
    prompt_lengths: list[int]
    image_grids: list[list[tuple[int, int]]] | None = None  # M-RoPE families: each sample's picture grids
    image_kept: list[list[np.ndarray]] | None = None  # and each picture's kept merged-token indices

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])


def load_image(path: str | Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise UsageError(f"image {path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UsageError(f"image {path}: cannot read it as an image ({type(exc).__name__})") from None


def check_prompts(prompts: Sequence[str]) -> None:
    """Refuse prompts that are not text, or are empty or whitespace only (one-line UsageError)."""
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise UsageError(f"prompt {index} is a {type(prompt).__name__}, not text")
        if not prompt.strip():
            where = "the prompt" if len(prompts) == 1 else f"prompt {index}"
            raise UsageError(f"{where} is empty; a prompt needs text (a question or an instruction)")


class PromptEncoder:
    def __init__(self, processor, image_token_id: int, image_tokens: int, max_context: int, pad_token_id: int):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.image_token_id = image_token_id
        self.image_tokens = image_tokens
        self.max_context = max_context
        self.pad_token_id = pad_token_id
        self.image_token = self.tokenizer.convert_ids_to_tokens(image_token_id)

    @classmethod
    def from_dir(cls, processor_dir: Path, runtime: dict) -> PromptEncoder:
        """The saved processor, loaded without transformers where ``light_processor`` handles its files."""
        from tpc.runtimes.light_processor import load_processor

        processor = load_processor(processor_dir)
        return cls(
            processor, runtime["image_token_id"], runtime["keep"], runtime["max_context"], runtime["pad_token_id"]
        )

    def template(self, text: str, with_image: bool) -> str:
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": text}]
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": content}]
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return FALLBACK_TEMPLATE.format(image=f"{self.image_token}\n" if with_image else "", text=text)

    def encode(self, prompt: str, with_image: bool, image_tokens: int | None = None) -> list[int]:
        if self.image_token in prompt:
            raise UsageError(f"the prompt must not contain {self.image_token}; pass the image with --image")
        ids = self.tokenizer(self.template(prompt, with_image)).input_ids
        count = ids.count(self.image_token_id)
        if count != (1 if with_image else 0):
            raise UsageError(f"the chat template produced {count} image tokens, expected {int(with_image)}")
        if with_image:
            at = ids.index(self.image_token_id)
            ids = ids[:at] + [self.image_token_id] * (image_tokens or self.image_tokens) + ids[at + 1 :]
        return ids

    def crops(self, images: Sequence[object] | None, count: int, layout) -> Crops | None:
        """Every picture's preprocessed crops (``layout``: tpc.runtimes.image_layout), or None for text only."""
        loaded = self._images(images, count)
        return None if loaded is None else layout.crops(self.processor.image_processor, loaded)

    def _images(self, images: Sequence[object] | None, count: int) -> list | None:
        if images is not None and len(images) != count:
            raise UsageError(f"{count} prompts but {len(images)} images")
        if images is None or all(i is None for i in images):
            return None
        if any(i is None for i in images):
            raise UsageError("a batch must have an image for every prompt, or for none")
        return [load_image(i) if isinstance(i, (str, Path)) else i for i in images]

    def pixels(self, images: Sequence[object] | None, count: int) -> np.ndarray | None:
        """Preprocessed pixel values [B,3,H,W] (one crop per picture), or None for a text-only batch."""
        loaded = self._images(images, count)
        if loaded is None:
            return None
        pixel_values = self.processor.image_processor(loaded, return_tensors="np")["pixel_values"]
        return np.asarray(pixel_values, dtype=np.float32)

    def tokens(
        self, prompts: Sequence[str], image_counts: Sequence[int] | None, max_new_tokens: int = 0
    ) -> PromptBatch:
        """Token ids with each sample's ``<image>`` expanded to its own count (None: text only)."""
        check_prompts(prompts)
        with_image = image_counts is not None
        encoded = [self.encode(p, with_image, image_counts[i] if with_image else None) for i, p in enumerate(prompts)]
        longest = max(len(ids) for ids in encoded)
        if longest + max(max_new_tokens, 0) > self.max_context:
            raise UsageError(
                f"the prompt is {longest} tokens ({max(image_counts) if with_image else 0} of them image tokens) "
                f"plus {max_new_tokens} new tokens, longer than the model's context of {self.max_context}"
            )
        input_ids = np.full((len(encoded), longest), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(encoded), longest), dtype=np.int64)
        for row, ids in enumerate(encoded):
            input_ids[row, longest - len(ids) :] = ids
            attention_mask[row, longest - len(ids) :] = 1
        return PromptBatch(input_ids, attention_mask, None, [len(ids) for ids in encoded])

    def __call__(
        self, prompts: Sequence[str], images: Sequence[object] | None = None, max_new_tokens: int = 0
    ) -> PromptBatch:
        pixel_values = self.pixels(images, len(prompts))
        counts = None if pixel_values is None else [self.image_tokens] * len(prompts)
        batch = self.tokens(prompts, counts, max_new_tokens)
        batch.pixel_values = pixel_values
        return batch

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)
