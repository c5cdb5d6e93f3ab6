"""Model adapters: where the visual tokens are in each supported VLM family (imports torch lazily)."""

from __future__ import annotations

import importlib

_LAZY = {
    "LoadedModel": "tpc.models.base",
    "ModelAdapter": "tpc.models.base",
    "load_model": "tpc.models.loading",
    "PRESETS": "tpc.models.presets",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tpc.models' has no attribute {name!r}")


__all__ = ["PRESETS", "LoadedModel", "ModelAdapter", "load_model"]
