"""An artifact's saved processor, loaded without transformers (tokenizers, jinja2, PIL, numpy).

``tpc run`` spends most of its start-up importing transformers to load the processor the
compiler saved (``ARTIFACT/processor/``, written by ``save_pretrained``). This module reads
the same files and reproduces what transformers 5 does with them, token for token and pixel
for pixel: the tokenizer and chat template (``tpc.runtimes.light_text``), CLIP preprocessing
(``tpc.runtimes.light_images``) and the multi-crop families' image processors
(``tpc.models.light_image_processors``, which also says which processor class holds which).

Anything it does not recognise (another tokenizer class, custom code, legacy token files,
another image processor, a size rule it does not reproduce) raises ``UnsupportedProcessor``;
``load_processor`` then falls back to transformers' ``AutoProcessor`` and says why in a debug
log, and where that fails for a family whose processor transformers cannot load everywhere
(LLaVA-OneVision's wants torchvision for its video processor), to the family's processor
built from transformers' parts (``tpc.models.families``: ``processor_parts``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tpc.runtimes.light_images import ClipImageProcessor
from tpc.runtimes.light_text import (
    LightTokenizer,
    UnsupportedProcessor,
    chat_template_source,
    compile_chat_template,
    plain,
    read_json,
)

__all__ = ["LightProcessor", "LightTokenizer", "UnsupportedProcessor", "load_processor"]

log = logging.getLogger(__name__)


class LightProcessor:
    """What ``PromptEncoder`` uses of a saved transformers processor: tokenizer, chat template and image
    processor (for multi-crop families, one with ``preprocess_anyres`` from the family's registry)."""

    def __init__(self, tokenizer: LightTokenizer, image_processor: ClipImageProcessor, chat_template: str | None):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template
        self._compiled = compile_chat_template(chat_template) if chat_template else None

    @classmethod
    def from_dir(cls, directory: str | Path) -> LightProcessor:
        directory = Path(directory)
        config_file = directory / "processor_config.json"
        processor_config = read_json(config_file) if config_file.is_file() else {}
        kind = processor_config.get("processor_class")
        from tpc.models.light_image_processors import IMAGE_PROCESSORS

        if kind not in IMAGE_PROCESSORS or processor_config.get("auto_map"):
            raise UnsupportedProcessor(f"processor class {kind!r} (handled: {', '.join(IMAGE_PROCESSORS)})")
        image_config = processor_config.get("image_processor")
        if (directory / "preprocessor_config.json").is_file():
            if image_config is not None:
                raise UnsupportedProcessor("image processor in both processor_config.json and preprocessor_config.json")
            image_config = read_json(directory / "preprocessor_config.json")
        if not isinstance(image_config, dict):
            raise UnsupportedProcessor("no image processor configuration")
        image_types, build = IMAGE_PROCESSORS[kind]
        if image_types is not None:  # the anyres processors (CLIP's image processor checks its own type)
            if image_config.get("image_processor_type") not in image_types:
                raise UnsupportedProcessor(
                    f"processor class {kind!r} with image processor {image_config.get('image_processor_type')!r}"
                )
            if processor_config.get("image_token", "<image>") != "<image>":
                raise UnsupportedProcessor(f"image_token {processor_config['image_token']!r}")
        image_processor = build(image_config, directory, processor_config)
        tokenizer = LightTokenizer.from_dir(directory)
        return cls(tokenizer, image_processor, chat_template_source(directory, processor_config))

    def apply_chat_template(
        self, conversation: list[dict], add_generation_prompt: bool = False, tokenize: bool = False
    ):
        """The rendered prompt, or with ``tokenize=True`` its token ids (``<image>`` left as one token)."""
        if self._compiled is None:
            raise ValueError("Cannot use apply_chat_template because this processor does not have a chat template.")
        messages = plain([{k: v for k, v in m.items() if v is not None} for m in conversation])
        variables = plain(dict(self.tokenizer.special_tokens_map))
        text = self._compiled.render(
            messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt, **variables
        )
        return self.tokenizer(text, add_special_tokens=False).input_ids if tokenize else text


def load_processor(directory: str | Path):
    """The light processor when it handles these files, else transformers' ``AutoProcessor`` (logged), else,
    for a family that builds its processor from parts (LLaVA-OneVision without torchvision), those parts."""
    try:
        return LightProcessor.from_dir(directory)
    except UnsupportedProcessor as exc:
        log.debug(
            "processor %s: loading it with transformers (the light loader does not handle it: %s)", directory, exc
        )
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(directory))
    except Exception as exc:
        parts = _parts_loader(Path(directory))
        if parts is None:
            raise
        log.debug("processor %s: AutoProcessor failed (%s); building it from its parts", directory, exc)
        return parts(str(directory))


def _parts_loader(directory: Path):
    """The parts loader of the family whose processor ``processor_config.json`` names, or None."""
    from tpc.models.families import family_for_processor

    config_file = directory / "processor_config.json"
    try:
        kind = json.loads(config_file.read_text(encoding="utf-8")).get("processor_class")
    except (OSError, ValueError, AttributeError):
        return None
    family = family_for_processor(kind)
    return None if family is None else family.parts_loader()
