"""User-defined score functions as methods: ``module:function`` or a ``tpc.methods`` entry point.

A score function receives, as keyword arguments,

* ``patches``: the feature layer's patch tokens [B, N, Dv] (before the projector),
* ``cls_attention``: the feature layer's [CLS] attention row over the patches [B, N],
* ``grid``: the patch grid shape ``(rows, cols)`` as Python ints,

and returns scores [B, N] using torch operations only (no Python branching on tensor
values: the function is recorded into the graph). tpc keeps the top-K patches in
raster order, exports them, and verifies the graph against the same function run
eagerly on the original model. An entry point may also provide a whole
``SelectionMethod``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

import tpc.methods.entry_points as entry_points
from tpc.errors import UsageError
from tpc.methods.base import SelectionMethod
from tpc.methods.entry_points import ENTRY_POINT_GROUP, entry_point_methods  # noqa: F401  (re-exported)
from tpc.methods.fastervlm import select_by_scores
from tpc.methods.reference import reference_cls_rows
from tpc.methods.selection import gather_tokens, reference_topk_ascending


def score_method(name: str, score: Callable[..., torch.Tensor], description: str | None = None) -> SelectionMethod:
    def select(values, keep: int):
        scores = score(patches=values["patches"], cls_attention=values["cls_attention"], grid=values["grid"])
        return select_by_scores(scores, values["patches"], keep)

    @torch.no_grad()
    def reference(adapter, pixel_values, keep: int):
        ref = adapter.reference_vision(pixel_values)
        cls = reference_cls_rows(adapter, ref, [adapter.vision.feature_layer])[0]
        side = int(round(adapter.vision.num_patches**0.5))
        scores = score(patches=ref["patches"], cls_attention=cls, grid=(side, side))
        indices = reference_topk_ascending(scores, keep)
        return indices, adapter.project(gather_tokens(ref["patches"], indices)), scores

    doc = (score.__doc__ or "").strip().splitlines()
    return SelectionMethod(
        name=name,
        description=description or (doc[0] if doc else f"user score {name}"),
        needs=("cls_attention",),
        select=select,
        reference=reference,
        extra={"plugin": True, "gathers": True},
    )


def load_spec(spec: str) -> SelectionMethod:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"method {spec!r}: a user method is given as module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"method {spec!r}: cannot import {module_name} ({exc})") from None
    target = getattr(module, attr, None)
    if target is None:
        raise UsageError(f"method {spec!r}: {module_name} has no attribute {attr!r}")
    return _as_method(spec, target)


def _as_method(name: str, target) -> SelectionMethod:
    if isinstance(target, SelectionMethod):
        return target
    if callable(target):
        return score_method(name, target)
    raise UsageError(f"method {name!r} is neither a score function nor a SelectionMethod")


def load_entry_point(name: str) -> SelectionMethod | None:
    ep = entry_points.entry_point_methods().get(name)
    return _as_method(name, ep.load()) if ep is not None else None
