"""Turn (image, prompt) pairs into model inputs with the checkpoint's own processor.

The prompt is wrapped by the checkpoint's chat template as one user turn holding the
sample's pictures (in order) and then the text, with the generation prompt added (what
transformers' image-text-to-text pipeline does); each picture's ``<image>`` token is then
expanded to that picture's rows (the artifact's K kept tokens, or a multi-crop picture's
own count). A sample may have no picture, one, or several; batches are left-padded.
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
    # each sample's image spans (first row, rows) in prompt order, in the padded rows; [] for a text-only sample
    image_spans: list[list[tuple[int, int]]] | None = None

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

    def template(self, text: str, images: int | bool) -> str:
        """The chat template's prompt for ``text`` after ``images`` pictures (a bool: one or none)."""
        images = int(images)
        content = [{"type": "image"}] * images + [{"type": "text", "text": text}]
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": content}]
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return FALLBACK_TEMPLATE.format(image=f"{self.image_token}\n" * images, text=text)

    def encode(self, prompt: str, image_tokens: Sequence[int] | bool | int | None = None) -> list[int]:
        """Token ids of ``prompt`` after its pictures; ``image_tokens``: each picture's rows (``True``: one picture
        of the artifact's K rows; an int: one picture of that many; None/False/[]: text only)."""
        rows = picture_rows(image_tokens, self.image_tokens)
        if self.image_token in prompt:
            raise UsageError(f"the prompt must not contain {self.image_token}; pass the image with --image")
        ids = self.tokenizer(self.template(prompt, len(rows))).input_ids
        count = ids.count(self.image_token_id)
        if count != len(rows):
            raise UsageError(f"the chat template produced {count} image tokens, expected {len(rows)}")
        out, start = [], 0
        for n in rows:  # each placeholder, in order, becomes its picture's rows
            at = ids.index(self.image_token_id, start)
            out += ids[start:at] + [self.image_token_id] * n
            start = at + 1
        return out + ids[start:]

    def pictures(self, images: Sequence[object] | None, count: int) -> list[list[object]] | None:
        """Each sample's pictures, loaded (None: no sample has one). An entry of ``images`` is None (text only),
        one picture (a path, a PIL image or an array) or a list/tuple of pictures, in prompt order."""
        if images is None:
            return None
        if len(images) != count:
            raise UsageError(f"{count} prompts but {len(images)} images")
        loaded = []
        for entry in images:
            entry = [] if entry is None else list(entry) if isinstance(entry, (list, tuple)) else [entry]
            if any(picture is None for picture in entry):
                raise UsageError("a prompt's list of images holds None; give each prompt its pictures or None")
            loaded.append([load_image(p) if isinstance(p, (str, Path)) else p for p in entry])
        return loaded if any(loaded) else None

    def crops(self, images: Sequence[object] | None, count: int, layout) -> Crops | None:
        """Every picture's preprocessed crops, samples after one another (``layout``: tpc.runtimes.image_layout),
        or None for a text-only batch. ``images``: as ``pictures`` takes them."""
        pictures = self.pictures(images, count) or []
        flat = [p for sample in pictures for p in sample]
        several = [len(sample) > 1 for sample in pictures for _ in sample]
        return layout.crops(self.processor.image_processor, flat, several) if flat else None

    def pixels(self, images: Sequence[object] | None, count: int) -> np.ndarray | None:
        """Preprocessed pixel values [P,3,H,W] of every picture (one crop each), or None for a text-only batch."""
        flat = [p for sample in self.pictures(images, count) or [] for p in sample]
        if not flat:
            return None
        pixel_values = self.processor.image_processor(flat, return_tensors="np")["pixel_values"]
        return np.asarray(pixel_values, dtype=np.float32)

    def tokens(self, prompts: Sequence[str], image_counts: Sequence | None, max_new_tokens: int = 0) -> PromptBatch:
        """Token ids with each picture's ``<image>`` expanded to its own rows; ``image_counts``: per sample its
        pictures' rows (a list), one picture's rows (an int) or None/[] (text only); None: a text-only batch."""
        check_prompts(prompts)
        rows = [picture_rows(c, self.image_tokens) for c in (image_counts or [None] * len(prompts))]
        encoded = [self.encode(p, r) for p, r in zip(prompts, rows, strict=True)]
        longest = max(len(ids) for ids in encoded)
        if longest + max(max_new_tokens, 0) > self.max_context:
            row = max(range(len(encoded)), key=lambda i: len(encoded[i]))
            raise UsageError(
                f"the prompt is {longest} tokens ({sum(rows[row])} of them image tokens) "
                f"plus {max_new_tokens} new tokens, longer than the model's context of {self.max_context}"
            )
        input_ids = np.full((len(encoded), longest), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(encoded), longest), dtype=np.int64)
        spans = []
        for row, ids in enumerate(encoded):
            pad = longest - len(ids)
            input_ids[row, pad:] = ids
            attention_mask[row, pad:] = 1
            spans.append(_spans(ids, self.image_token_id, rows[row], pad))
        return PromptBatch(input_ids, attention_mask, None, [len(ids) for ids in encoded], image_spans=spans)

    def __call__(
        self, prompts: Sequence[str], images: Sequence[object] | None = None, max_new_tokens: int = 0
    ) -> PromptBatch:
        """Single-crop artifacts: every picture gives the artifact's K rows."""
        pictures = self.pictures(images, len(prompts))
        counts = None if pictures is None else [[self.image_tokens] * len(p) for p in pictures]
        batch = self.tokens(prompts, counts, max_new_tokens)
        batch.pixel_values = self.pixels(pictures, len(prompts))
        return batch

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)


def picture_rows(counts, default: int) -> list[int]:
    """One sample's pictures' rows: a list as given, an int (or ``True``: ``default``) for one picture,
    None/False/[] for none."""
    if counts is None or counts is False:
        return []
    if counts is True:
        return [default]
    if isinstance(counts, (int, np.integer)):
        return [int(counts)]
    return [int(c) for c in counts]


def _spans(ids: list[int], image_token_id: int, rows: list[int], pad: int) -> list[tuple[int, int]]:
    """(first row, rows) of each picture's span in the padded row; pictures' spans may touch (their
    placeholders were adjacent in the template), so they are cut by the pictures' own row counts."""
    spans, start = [], 0
    for n in rows:
        at = ids.index(image_token_id, start)
        spans.append((pad + at, n))
        start = at + n
    return spans
