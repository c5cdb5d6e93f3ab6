"""Token-selection methods, by name (built-ins, ``module:function``, ``tpc.methods`` entry points).

Importing this package is cheap (no torch): a built-in's module is imported when the
method is looked up, and ``tpc.methods.params`` holds every built-in's parameters, so
the command line can check a method's name and arguments before loading anything.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tpc.errors import UsageError
from tpc.methods.budget import keep_count
from tpc.methods.params import BUILTIN_LOCATIONS, check_builtin_args

if TYPE_CHECKING:
    from tpc.methods.base import SelectionMethod
    from tpc.registry import Registry

_registry = None


def _load_builtin(name: str) -> SelectionMethod:
    module, _, attr = BUILTIN_LOCATIONS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def builtin_methods() -> Registry[SelectionMethod]:
    """Every built-in method (imports their modules, and torch)."""
    global _registry
    if _registry is None:
        from tpc.registry import Registry

        registry: Registry[SelectionMethod] = Registry("method")
        for name in BUILTIN_LOCATIONS:
            registry.register(name, _load_builtin(name))
        _registry = registry
    return _registry


def method_names() -> list[str]:
    """Built-in pre-LLM method names, without importing them."""
    return sorted(BUILTIN_LOCATIONS)


def unknown_method(name: str) -> UsageError:
    from tpc.methods.in_llm import LLM_METHODS

    return UsageError(
        f"unknown method {name!r}; choose one of: {', '.join(method_names())}; in-LLM: {', '.join(LLM_METHODS.names())}"
    )


def get_method(name: str) -> SelectionMethod:
    """A built-in by name, a user score function ``module:function``, or an entry point."""
    if name in BUILTIN_LOCATIONS:
        return builtin_methods().get(name)
    if ":" not in name and name not in entry_point_names():
        raise unknown_method(name)  # before importing the plugin machinery (torch)
    from tpc.methods.plugin import load_entry_point, load_spec

    if ":" in name:
        return load_spec(name)
    return load_entry_point(name)


def entry_point_names() -> set[str]:
    """Methods installed packages register in the ``tpc.methods`` entry-point group (not imported)."""
    import tpc.methods.entry_points as entry_points

    return set(entry_points.entry_point_methods())


def check_method_args(name: str, pairs: dict[str, str]) -> dict[str, Any] | None:
    """Check a built-in's name-independent arguments early; None when the method is not a built-in."""
    return check_builtin_args(name, pairs)


def __getattr__(name: str):
    if name == "METHODS":
        return builtin_methods()
    raise AttributeError(f"module 'tpc.methods' has no attribute {name!r}")


__all__ = ["METHODS", "builtin_methods", "check_method_args", "get_method", "keep_count", "method_names"]
