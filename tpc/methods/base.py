"""A token-selection method: how to score tokens, and which graph values it reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class SelectionMethod:
    """A pre-LLM method, as plain tensor functions (no graph editing here).

    ``score`` is traced into the graph by ``insert_token_selection``; it receives the
    graph values named in ``needs`` (exposed by earlier passes) and returns [B,N].
    ``reference`` recomputes the whole selection eagerly from the model's own modules
    for verification: ``reference(adapter, pixel_values, keep) -> (indices, features)``.
    """

    name: str
    description: str
    needs: tuple[str, ...]
    score: Callable[..., torch.Tensor]
    reference: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    prunes_at: str = "vision/LLM boundary"
    parameters: dict[str, Any] = field(default_factory=dict)
