"""Resolve the model argument: a preset name, a local checkpoint directory, or a hub id."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from tpc.errors import ModelLoadError
from tpc.models.base import LoadedModel
from tpc.models.families import family_for
from tpc.models.presets import PRESETS, build_preset
from tpc.models.source import OFFLINE_HINT, hub_location, resolve_model_arg

log = logging.getLogger(__name__)


def load_model(model_arg: str, dtype: str = "fp32") -> LoadedModel:
    """Load ``model_arg`` with SDPA attention, with its processor.

    ``dtype``: fp32, fp16, bf16, or ``auto`` (the checkpoint's own dtype, a bf16 checkpoint as fp16).
    Weights are loaded straight in that dtype: a half-precision checkpoint never passes through fp32.
    """
    source = resolve_model_arg(model_arg)
    if source.kind == "preset":
        preset = PRESETS[model_arg]
        if preset.builtin:
            model, processor = build_preset(preset)  # random fp32 weights, built in code (small)
            if dtype not in ("fp32", "auto"):
                cast_weights(model, _torch_dtype(dtype))
            source = {"kind": "preset", "id": model_arg, "revision": f"seed={preset.seed}"}
            return LoadedModel(model, processor, source, default_image_sizes=preset.image_sizes)
        return _load_pretrained(hub_location(preset.hub_id), kind="hub", alias=model_arg, dtype=dtype)
    if source.kind == "local":
        return _load_pretrained(source.location, kind="local", dtype=dtype)
    return _load_pretrained(hub_location(model_arg, local_hint=True), kind="hub", dtype=dtype)


def cast_weights(model, dtype) -> None:
    """Parameters to ``dtype`` in place; buffers (rotary ``inv_freq``, position ids) stay as they are, as in a
    checkpoint loaded in half precision."""
    for param in model.parameters():
        param.data = param.data.to(dtype)


def _torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def checkpoint_dtype(config) -> str:
    """fp32, fp16 or bf16: the dtype a checkpoint's config says its weights are stored in (fp32 if unsaid)."""
    value = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32")
    return {"float16": "fp16", "bfloat16": "bf16"}.get(value.replace("torch.", ""), "fp32")


def _load_pretrained(location: str, kind: str, alias: str | None = None, dtype: str = "fp32") -> LoadedModel:
    import transformers
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as exc:
        if kind == "hub":
            raise ModelLoadError(f"cannot fetch {location!r} from the model hub (offline?); {OFFLINE_HINT}") from exc
        raise ModelLoadError(f"{location}: unreadable config.json ({_first_line(exc)})") from exc
    family = family_for(getattr(config, "model_type", None), location)
    processor = _load_processor(location, family, config)
    try:
        model_class = getattr(transformers, family.hf_class)
        if dtype == "auto":  # the checkpoint's own dtype; bf16 as fp16 (what ONNX Runtime GPU and TensorRT run)
            dtype = "fp16" if checkpoint_dtype(config) in ("fp16", "bf16") else "fp32"
        model = model_class.from_pretrained(location, dtype=_torch_dtype(dtype), attn_implementation="sdpa")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{location}: cannot load the weights ({_first_line(exc)})") from exc
    model.eval()
    revision = getattr(config, "_commit_hash", None)
    if kind == "local":
        revision = "config-sha256:" + hashlib.sha256(Path(location, "config.json").read_bytes()).hexdigest()[:16]
    source = {"kind": kind, "id": alias or location, "path": location, "revision": revision}
    return LoadedModel(model, processor, source)


def _load_processor(location: str, family, config):
    """transformers' ``AutoProcessor``; where it fails for a family that names a parts loader (LLaVA-OneVision
    without torchvision: its processor insists on a video processor), the processor built from its parts."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(location)
    except Exception as exc:
        parts = family.parts_loader()
        if parts is None:
            if isinstance(exc, (OSError, ValueError, TypeError)):
                raise ModelLoadError(f"{location}: no usable tokenizer/processor files ({_first_line(exc)})") from exc
            raise
        log.debug(
            "%s: AutoProcessor failed (%s); building the %s processor from its parts", location, exc, family.title
        )
        try:
            return parts(location, config)
        except (OSError, ValueError, TypeError) as inner:
            raise ModelLoadError(
                f"{location}: no usable tokenizer/processor files ({_first_line(inner)}; "
                f"transformers' processor: {_first_line(exc)})"
            ) from inner


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
