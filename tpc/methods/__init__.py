"""Token-selection methods, by name."""

from tpc.methods.base import SelectionMethod
from tpc.methods.budget import keep_count
from tpc.methods.fastervlm import FASTERVLM
from tpc.registry import Registry

METHODS: Registry[SelectionMethod] = Registry("method")
METHODS.register(FASTERVLM.name, FASTERVLM)

__all__ = ["METHODS", "SelectionMethod", "keep_count"]
