"""Method parameters and their documented ranges (torch-free: the CLI checks them before loading).

``PARAMS`` holds the parameters of every built-in method by name; the method modules use
these same tuples, so the range the CLI enforces is the range the method documents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tpc.errors import UsageError


@dataclass(frozen=True)
class Param:
    name: str
    kind: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False  # (minimum, ...] instead of [minimum, ...]

    def parse(self, text: str, flag: str = "--method-arg") -> Any:
        try:
            value = self.kind(text)
        except ValueError:
            raise UsageError(f"{flag} {self.name}={text!r}: expected {self.kind.__name__}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{flag} {self.name}={text}: must be a finite number")
        if not self.accepts(value):
            raise UsageError(f"{flag} {self.name}={text}: must be in {self.range_text()}")
        return value

    def accepts(self, value) -> bool:
        if self.minimum is not None and (value <= self.minimum if self.exclusive_minimum else value < self.minimum):
            return False
        return self.maximum is None or value <= self.maximum

    def range_text(self) -> str:
        low = "(" if self.exclusive_minimum else "["
        low += "-inf" if self.minimum is None else f"{self.minimum:g}"
        high = "inf)" if self.maximum is None else f"{self.maximum:g}]"
        return f"{low}, {high}"


def parse_params(method: str, params: tuple[Param, ...], pairs: dict[str, str]) -> dict[str, Any]:
    known = {p.name: p for p in params}
    unknown = sorted(set(pairs) - set(known))
    if unknown:
        valid = ", ".join(known) or "none"
        raise UsageError(f"method {method} has no parameter {unknown[0]!r} (parameters: {valid})")
    values = {p.name: p.default for p in params}
    values.update({k: known[k].parse(v) for k, v in pairs.items()})
    return values


PARAMS: dict[str, tuple[Param, ...]] = {
    "fastervlm": (),
    "received": (),
    "vtc-cls": (Param("start_layer", int, 16, "first ViT layer of the ensemble (at most the feature layer)", 0),),
    "visionzip": (
        Param("dominant", int, 0, "dominant tokens, incl. [CLS] where the encoder has one (0: keep - contextual)", 0),
        Param("contextual", int, 0, "merged contextual tokens (0: 10/64 of keep)", 0),
    ),
    "divprune": (),
    "uniform": (),
    "pool": (),
    "random": (Param("seed", int, 0, "random seed", 0),),
    "cls-mass": (
        Param("mass", float, 0.9, "share of the [CLS] attention mass to keep", 0.0, 1.0, exclusive_minimum=True),
    ),
}
# Where each built-in lives, so that looking one up imports only what it needs.
BUILTIN_LOCATIONS: dict[str, str] = {
    "fastervlm": "tpc.methods.fastervlm:FASTERVLM",
    "received": "tpc.methods.received:RECEIVED",
    "vtc-cls": "tpc.methods.vtc_cls:VTC_CLS",
    "visionzip": "tpc.methods.visionzip:VISIONZIP",
    "divprune": "tpc.methods.divprune:DIVPRUNE",
    "uniform": "tpc.methods.baselines:UNIFORM",
    "pool": "tpc.methods.baselines:POOL",
    "random": "tpc.methods.baselines:RANDOM",
    "cls-mass": "tpc.methods.adaptive:CLS_MASS",
}


def check_builtin_args(name: str, pairs: dict[str, str]) -> dict[str, Any] | None:
    """Parse a built-in method's arguments without importing it; None for other names."""
    if name not in PARAMS:
        return None
    return parse_params(name, PARAMS[name], pairs)
