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

from dataclasses import dataclass, field
from typing import Any, Callable

from tpc.errors import UsageError

PRE_PROJECTOR = "pre_projector"
POST_PROJECTOR = "post_projector"


@dataclass(frozen=True)
class Param:
    name: str
    kind: type
    default: Any
    help: str
    minimum: float | None = None

    def parse(self, text: str) -> Any:
        try:
            value = self.kind(text)
        except ValueError:
            raise UsageError(f"--method-arg {self.name}={text!r}: expected {self.kind.__name__}") from None
        if self.minimum is not None and value < self.minimum:
            raise UsageError(f"--method-arg {self.name}={text}: must be >= {self.minimum}")
        return value


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
    extra: dict[str, Any] = field(default_factory=dict)

    def parse_args(self, pairs: dict[str, str]) -> dict[str, Any]:
        known = {p.name: p for p in self.params}
        unknown = sorted(set(pairs) - set(known))
        if unknown:
            valid = ", ".join(known) or "none"
            raise UsageError(f"method {self.name} has no parameter {unknown[0]!r} (parameters: {valid})")
        values = {p.name: p.default for p in self.params}
        values.update({k: known[k].parse(v) for k, v in pairs.items()})
        return values

    def layers(self, layout, params: dict) -> list[int]:
        if self.attention_layers is None:
            return [layout.feature_layer]
        return self.attention_layers(layout, params)
