"""The model families tpc compiles, chosen from a checkpoint's own ``config.model_type``.

Each family names its adapter (the only code that knows where that architecture keeps
its visual tokens), the transformers class that loads it, whether its vision encoder has
a [CLS] token (methods that score with the [CLS] row need one) and its presets. A family
whose transformers processor cannot load everywhere (LLaVA-OneVision's needs torchvision for
its video processor) names a loader that builds the processor from its parts
(``processor_parts``), used by ``tpc.models.loading`` and by ``tpc run``'s processor fallback.
Adding a family means one adapter module in ``tpc/models`` plus an entry here. Torch-free.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from tpc.errors import ModelLoadError


@dataclass(frozen=True)
class Family:
    model_type: str  # config.model_type
    title: str
    adapter: str  # "module:Class" of the adapter
    hf_class: str  # transformers class that loads a checkpoint
    has_cls: bool  # the vision encoder has a [CLS] token
    multi_crop: bool  # several crops per image (anyres)
    decoder: str
    processor_class: str = ""  # processor_class of its saved processor (processor_config.json)
    # "module:function" (location, config=None) -> processor from its parts, when AutoProcessor fails
    processor_parts: str | None = None
    # grid families (Qwen): one vision graph per compiled image grid, and only the methods that select merged
    # tokens after the 2x2 merger (None: every method whose score the encoder has)
    grid: bool = False
    methods: tuple[str, ...] | None = None

    def adapter_class(self):
        return _resolve(self.adapter)

    def parts_loader(self):
        """The function that builds this family's processor from its parts, or None."""
        return _resolve(self.processor_parts) if self.processor_parts else None


def _resolve(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


GRID_METHODS = ("received", "visionzip", "divprune", "random")

FAMILIES: dict[str, Family] = {
    family.model_type: family
    for family in (
        Family(
            "llava",
            "LLaVA-1.5",
            "tpc.models.llava:LlavaAdapter",
            "LlavaForConditionalGeneration",
            has_cls=True,
            multi_crop=False,
            decoder="Llama",
            processor_class="LlavaProcessor",
        ),
        Family(
            "llava_next",
            "LLaVA-NeXT",
            "tpc.models.llava_next:LlavaNextAdapter",
            "LlavaNextForConditionalGeneration",
            has_cls=True,
            multi_crop=True,
            decoder="Mistral, Vicuna (Llama)",
            processor_class="LlavaNextProcessor",
        ),
        Family(
            "llava_onevision",
            "LLaVA-OneVision",
            "tpc.models.llava_onevision:LlavaOnevisionAdapter",
            "LlavaOnevisionForConditionalGeneration",
            has_cls=False,
            multi_crop=True,
            decoder="Qwen2",
            processor_class="LlavaOnevisionProcessor",
            processor_parts="tpc.models.onevision_processor:load_parts",
        ),
        Family(
            "qwen2_vl",
            "Qwen2-VL",
            "tpc.models.qwen2_vl:Qwen2VLAdapter",
            "Qwen2VLForConditionalGeneration",
            has_cls=False,
            multi_crop=False,
            decoder="Qwen2 (M-RoPE)",
            processor_class="Qwen2VLProcessor",
            processor_parts="tpc.models.qwen_processor:load_parts",
            grid=True,
            methods=GRID_METHODS,
        ),
        Family(
            "qwen2_5_vl",
            "Qwen2.5-VL",
            "tpc.models.qwen2_5_vl:QwenVLAdapter",
            "Qwen2_5_VLForConditionalGeneration",
            has_cls=False,
            multi_crop=False,
            decoder="Qwen2 (M-RoPE)",
            processor_class="Qwen2_5_VLProcessor",
            processor_parts="tpc.models.qwen_processor:load_parts",
            grid=True,
            methods=GRID_METHODS,
        ),
    )
}


# model types refused with a reason: why the three-graph cut (vision -> embedding -> decoder) cannot carry them
_DEEPSTACK = (
    "its DeepStack feeds intermediate ViT features into the first decoder layers, which tpc's "
    "vision -> embedding -> decoder cut does not carry"
)
REFUSED: dict[str, str] = {"qwen3_vl": f"Qwen3-VL: {_DEEPSTACK}", "qwen3_vl_moe": f"Qwen3-VL-MoE: {_DEEPSTACK}"}


def family_for(model_type: str | None, where: str = "") -> Family:
    """The family of ``model_type``; an unsupported one is a one-line ModelLoadError listing the supported."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    prefix = f"{where}: " if where else ""
    if model_type in REFUSED:
        qwen = ", ".join(f"{f.model_type} ({f.title})" for f in FAMILIES.values() if f.model_type.startswith("qwen"))
        raise ModelLoadError(
            f"{prefix}model type {model_type!r} is not supported ({REFUSED[model_type]}); "
            f"supported Qwen families: {qwen}"
        )
    raise ModelLoadError(
        f"{prefix}model type {model_type!r} is not supported; supported families: "
        + ", ".join(f"{f.model_type} ({f.title})" for f in FAMILIES.values())
    )


def family_for_processor(processor_class: str | None) -> Family | None:
    """The family whose saved processor has this ``processor_class``, or None."""
    return next((f for f in FAMILIES.values() if processor_class and f.processor_class == processor_class), None)


def make_adapter(model: Any, processor: Any):
    """The adapter of ``model``'s family (from its config's ``model_type``)."""
    family = family_for(getattr(model.config, "model_type", None))
    return family.adapter_class()(model, processor)
