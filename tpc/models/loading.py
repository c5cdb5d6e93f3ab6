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


def load_model(model_arg: str) -> LoadedModel:
    """Load ``model_arg`` in float32 with SDPA attention, with its processor."""
    source = resolve_model_arg(model_arg)
    if source.kind == "preset":
        preset = PRESETS[model_arg]
        if preset.builtin:
            model, processor = build_preset(preset)
            source = {"kind": "preset", "id": model_arg, "revision": f"seed={preset.seed}"}
            return LoadedModel(model, processor, source)
        return _load_pretrained(hub_location(preset.hub_id), kind="hub", alias=model_arg)
    if source.kind == "local":
        return _load_pretrained(source.location, kind="local")
    return _load_pretrained(hub_location(model_arg, local_hint=True), kind="hub")


def _load_pretrained(location: str, kind: str, alias: str | None = None) -> LoadedModel:
    import torch
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
        model = model_class.from_pretrained(location, dtype=torch.float32, attn_implementation="sdpa")
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
