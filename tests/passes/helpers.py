"""Tiny traced vision graphs for pass tests."""

from __future__ import annotations

import torch

from tpc.compiler.trace import trace_vision
from tpc.methods import METHODS
from tpc.passes import PassContext


def traced(adapter):
    return trace_vision(adapter.vision_boundary(), adapter.vision.image_size)


def context(adapter, keep: int = 64, method: str = "fastervlm") -> PassContext:
    return PassContext(layout=adapter.vision, method=METHODS.get(method), keep=keep)


def pixels(batch: int = 2, seed: int = 0, size: int = 336) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
