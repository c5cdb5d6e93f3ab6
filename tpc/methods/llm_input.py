"""Selection at the LLM input (DART, CDPruner): names, parameters, budgets and the CLI checks.

The methods run on the assembled input embeddings between the ``embed`` graph and the
decoder (METHODS.md, "Selection at the LLM input"). The kernels live in ``dart.py`` and
``cdpruner.py`` (imported only when an input method is asked for: they need torch).
Per image span of ``n`` tokens the quota is ``clamp(ceil(n*(1-R)), 1, n)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from tpc.errors import UsageError
from tpc.methods.params import Param, parse_params

INPUT_METHODS = ("dart", "cdpruner")
DESCRIPTIONS = {
    "dart": "DART: keeps the image tokens least duplicated by a few image and prompt pivots",
    "cdpruner": "CDPruner: a DPP over the image span, conditioned on the prompt's mean text embedding",
}


def input_params(name: str) -> tuple[Param, ...]:
    if name == "dart":
        from tpc.methods.dart import DART_PARAMS

        return DART_PARAMS
    if name == "cdpruner":
        from tpc.methods.cdpruner import CDPRUNER_PARAMS

        return CDPRUNER_PARAMS
    raise UsageError(f"unknown LLM-input method {name!r}; choose one of: {', '.join(INPUT_METHODS)}")


def parse_input_args(name: str, pairs: dict[str, str], flag: str = "--method-arg") -> dict[str, Any]:
    """The parameters with their defaults; ``flag`` is the one the user typed (named in the errors)."""
    params = input_params(name)
    known = {p.name: p for p in params}
    values = parse_params(name, params, {k: v for k, v in pairs.items() if k not in known})  # unknown names raise
    values.update({k: known[k].parse(v, flag) for k, v in pairs.items()})
    return values


def input_keep(n: int, ratio: float) -> int:
    """The quota of a span of ``n`` tokens: ``clamp(ceil(n*(1-R)), 1, n)`` (1e-9 absorbs rounding)."""
    return min(max(math.ceil(n * (1.0 - ratio) - 1e-9), 1), n)


def check_input_args(name: str, params: dict[str, Any], n: int, keep: int) -> None:
    """The kernel's own one-line checks for a span of ``n`` tokens keeping ``keep``."""
    if name == "dart":
        from tpc.methods.dart import check_dart_args

        check_dart_args(keep, params["image_pivots"], params["text_pivots"], n)
    else:
        from tpc.methods.cdpruner import check_cdpruner_args

        check_cdpruner_args(keep, n, params["variant"], params["relevance_weight"], params["split"])


def input_kernel(name: str) -> Callable:
    """``select(image [B,n,D], text [B,T,D], text_mask [B,T], keep, **params) -> kept [B,keep]``."""
    if name == "dart":
        from tpc.methods.dart import dart_select

        return dart_select
    from tpc.methods.cdpruner import cdpruner_select

    return cdpruner_select


def input_reference(name: str) -> Callable:
    """The naive per-sample reference with the kernel's signature (``llm_input_reference``)."""
    from tpc.methods.llm_input_reference import reference_cdpruner, reference_dart

    return reference_dart if name == "dart" else reference_cdpruner


__all__ = [
    "DESCRIPTIONS",
    "INPUT_METHODS",
    "check_input_args",
    "input_keep",
    "input_kernel",
    "input_params",
    "input_reference",
    "parse_input_args",
]
