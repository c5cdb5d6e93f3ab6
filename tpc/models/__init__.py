"""Model adapters: where the visual tokens are in each supported VLM family."""

from tpc.models.base import LoadedModel, ModelAdapter
from tpc.models.loading import load_model
from tpc.models.presets import PRESETS

__all__ = ["LoadedModel", "ModelAdapter", "PRESETS", "load_model"]
