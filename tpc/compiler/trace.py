"""Trace model parts with torch.export into FX graphs the passes can edit."""

from __future__ import annotations

import torch
from torch.fx import GraphModule

from tpc.errors import ExportError

MAX_BATCH = 64


def batch_dim() -> torch.export.Dim:
    return torch.export.Dim("batch", min=1, max=MAX_BATCH)


def trace_vision(
    boundary: torch.nn.Module,
    image_size: int,
    dtype: torch.dtype = torch.float32,
    sample: torch.Tensor | None = None,
    input_name: str = "pixel_values",
) -> GraphModule:
    """torch.export the vision boundary with a dynamic batch; return an editable module.

    The sample batch is 2: a sample of 1 would specialise the batch dimension. The
    returned module has plain positional inputs and a tuple output, so passes can add
    outputs by editing the output node.
    """
    if sample is None:  # the graph's input dtype is the weights'
        sample = torch.zeros(2, 3, image_size, image_size, dtype=dtype)
    try:
        with torch.no_grad():
            program = torch.export.export(boundary, (sample,), dynamic_shapes={input_name: {0: batch_dim()}})
    except Exception as exc:
        raise ExportError(f"torch.export of the vision tower failed: {type(exc).__name__}: {exc}") from exc
    gm = program.module()
    gm.graph._codegen = torch.fx.graph.CodeGen()
    out = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    values = out.args[0]
    out.args = (tuple(values) if isinstance(values, (list, tuple)) else (values,),)
    gm.recompile()
    return gm
