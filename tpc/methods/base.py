"""A token-selection method: its parameters, the graph values it reads, how it selects.

Methods are plain tensor code (no graph editing here). ``select`` runs on FX proxies
inside ``insert_token_selection`` and on real tensors alike:

    select(values: dict[str, Tensor], keep: int, **params) -> (kept_indices [B,K], tokens [B,K,C])

``values`` holds what the method ``needs`` (exposed by earlier passes) plus
``patches`` (feature-layer patch tokens [B,N,Dv], for methods that select before the
projector) or ``features`` (projected tokens [B,N,D], for methods that select after it).
``reference(adapter, pixel_values, keep, **params) -> (kept_indices, features, scores)``
recomputes the method eagerly from the model's own modules (scores may be None).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tpc.methods.params import Param, parse_params

PRE_PROJECTOR = "pre_projector"
POST_PROJECTOR = "post_projector"
__all__ = ["POST_PROJECTOR", "PRE_PROJECTOR", "Param", "SelectionMethod"]


@dataclass(frozen=True)
class SelectionMethod:
    name: str
    description: str
    needs: tuple[str, ...]
    select: Callable[..., tuple]
    reference: Callable[..., tuple]
    stage: str = PRE_PROJECTOR
    params: tuple[Param, ...] = ()
    # ViT layers whose [CLS] attention rows the method reads (default: the feature layer)
    attention_layers: Callable[[Any, dict], list[int]] | None = None
    prunes_at: str = "vision/LLM boundary"
    # kept-token count from the user's budget and the method's parameters (default: the budget)
    resolve_keep: Callable[[int, dict], int] | None = None
    # parameters that depend on the model: (layout, params, names the user gave) -> (params, notes)
    resolve_params: Callable[[Any, dict, set], tuple[dict, list[str]]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def parse_args(self, pairs: dict[str, str]) -> dict[str, Any]:
        return parse_params(self.name, self.params, pairs)

    @property
    def needs_cls(self) -> bool:
        """Scores with the [CLS] attention row: only for vision encoders that have a [CLS] token."""
        return any(need.startswith("cls_attention") for need in self.needs)

    def layers(self, layout, params: dict) -> list[int]:
        if self.attention_layers is None:
            return [layout.feature_layer]
        return self.attention_layers(layout, params)
