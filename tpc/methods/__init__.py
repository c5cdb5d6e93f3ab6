"""Token-selection methods, by name (built-ins, ``module:function``, ``tpc.methods`` entry points)."""

from tpc.errors import UsageError
from tpc.methods.adaptive import CLS_MASS
from tpc.methods.base import SelectionMethod
from tpc.methods.baselines import POOL, RANDOM, UNIFORM
from tpc.methods.budget import keep_count
from tpc.methods.divprune import DIVPRUNE
from tpc.methods.fastervlm import FASTERVLM
from tpc.methods.visionzip import VISIONZIP
from tpc.methods.vtc_cls import VTC_CLS
from tpc.registry import Registry

METHODS: Registry[SelectionMethod] = Registry("method")
for _method in (FASTERVLM, VTC_CLS, VISIONZIP, DIVPRUNE, UNIFORM, POOL, RANDOM, CLS_MASS):
    METHODS.register(_method.name, _method)


def get_method(name: str) -> SelectionMethod:
    """A built-in by name, a user score function ``module:function``, or an entry point."""
    from tpc.methods.plugin import load_entry_point, load_spec

    if name in METHODS:
        return METHODS.get(name)
    if ":" in name:
        return load_spec(name)
    method = load_entry_point(name)
    if method is None:
        from tpc.methods.in_llm import LLM_METHODS

        try:
            METHODS.get(name)
        except UsageError as exc:  # list the in-LLM methods too: --method fastv is valid
            raise UsageError(f"{exc}; in-LLM: {', '.join(LLM_METHODS.names())}") from None
    return method


__all__ = ["METHODS", "SelectionMethod", "UsageError", "get_method", "keep_count"]
