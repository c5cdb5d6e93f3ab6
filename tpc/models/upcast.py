"""Run a half-precision model as its fp32 reference without an fp32 copy of its weights.

``fp32_reference(model)`` upcasts the few weights outside the repeated blocks (embeddings,
norms, projector, LM head) for the duration, and the modules inside each block of every
top-level ``nn.ModuleList`` (ViT layers, decoder layers) one at a time, each just for its own
forward: a forward pre-hook swaps fp32 copies of the module's own weights in, a forward hook
swaps the original half-precision storage back (no new copy: memory-mapped checkpoint weights
stay the only copy). Peak memory is the half-precision model plus one module's weights in fp32
(and the outside weights), so a 7 B reference fits where two copies would not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def _blocks(model: nn.Module) -> list[nn.Module]:
    """Children of the outermost ``ModuleList``s (a list nested inside a block belongs to that block)."""
    blocks, prefixes = [], []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and not any(name.startswith(p) for p in prefixes):
            prefixes.append(name + ".")
            blocks.extend(module)
    return blocks


def _tensors(module: nn.Module, recurse: bool):
    yield from module.parameters(recurse=recurse)
    yield from module.buffers(recurse=recurse)


def _half(tensors, dtype: torch.dtype) -> list[torch.Tensor]:
    """The tensors stored in ``dtype`` (the ones to upcast and to restore; fp32 buffers stay as they are)."""
    return [t for t in tensors if t.is_floating_point() and t.dtype == dtype]


class _Upcasts:
    """fp32 copies swapped in for tensors, and their original storage swapped back afterwards.

    Restoring puts the ORIGINAL storage back rather than casting fp32 -> half again: a checkpoint's
    weights are often memory-mapped from its files, and a fresh half-precision copy would keep both
    the mapped pages and the copy resident (a second copy of a 7 B model)."""

    def __init__(self):
        self.originals: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def up(self, tensors) -> None:
        for tensor in tensors:
            if id(tensor) not in self.originals:
                self.originals[id(tensor)] = (tensor, tensor.data)
                tensor.data = tensor.data.to(torch.float32)

    def down(self, tensors) -> None:
        for tensor in tensors:
            entry = self.originals.pop(id(tensor), None)
            if entry is not None:
                tensor.data = entry[1]

    def restore_all(self) -> None:
        for tensor, original in self.originals.values():
            tensor.data = original
        self.originals.clear()


@contextmanager
def fp32_reference(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` computing in fp32 inside the block; its weights are back in their dtype afterwards."""
    dtype = next(model.parameters()).dtype
    if dtype == torch.float32:
        yield model
        return
    blocks = _blocks(model)
    inside = {id(t) for block in blocks for t in _tensors(block, recurse=True)}
    outside = _half((t for t in _tensors(model, recurse=True) if id(t) not in inside), dtype)
    # every module of a block upcasts its own tensors around its own forward, so a reference that calls a
    # block's submodules directly (a layer's norm, its q/k projections) computes in fp32 too
    modules = [m for block in blocks for m in block.modules()]
    own = {id(m): _half(_tensors(m, recurse=False), dtype) for m in modules}
    upcasts, handles = _Upcasts(), []
    try:
        upcasts.up(outside)
        for module in modules:
            tensors = own[id(module)]
            if not tensors:
                continue
            handles.append(module.register_forward_pre_hook(lambda m, args, t=tensors: upcasts.up(t)))
            handles.append(module.register_forward_hook(lambda m, args, out, t=tensors: upcasts.down(t)))
        yield model
    finally:
        for handle in handles:
            handle.remove()
        upcasts.restore_all()
