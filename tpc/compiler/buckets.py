"""Bucketed artifacts: one vision encoder, one selector graph per kept-token count, one projector.

Form, chosen for TensorRT and measured on ONNX Runtime (see BENCHMARKS.md): K as a
runtime input would need a data-dependent TopK K and slice shapes, which TensorRT only
takes bounded by a profile and which ``tpc check`` rejects; separate full vision graphs
per bucket would store or load the ViT weights once per bucket. Splitting at the
selection keeps every K constant and every weight single: the encoder outputs what the
method reads, each ``select_k{K}`` graph holds only the selection (no weights), and the
projector runs on whichever K was selected.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tpc.compiler.onnx_export import export_onnx
from tpc.compiler.trace import batch_dim
from tpc.errors import UsageError
from tpc.methods.base import POST_PROJECTOR
from tpc.passes.expose_selection_inputs import ADAPTIVE, selection_input_names

ENCODER = "vision_encoder"
PROJECTOR = "projector"
FORM = "shared encoder + per-bucket selector + shared projector"


def selector_name(keep: int) -> str:
    return f"select_k{keep}"


def parse_buckets(text: str | None, num_patches: int) -> list[int]:
    if not text:
        return []
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UsageError(f"--buckets must be comma-separated integers, got {text!r}") from None
    if not sizes or sizes[0] < 1 or sizes[-1] > num_patches:
        raise UsageError(f"--buckets {text}: every bucket must be in [1, {num_patches}]")
    return sizes


class BucketSelector(torch.nn.Module):
    """``method.select`` at one constant K, on the encoder's outputs."""

    def __init__(self, method, params: dict, keep: int, grid: tuple[int, int], names: list[str]):
        super().__init__()
        self.method, self.params, self.keep, self.grid, self.names = method, params, keep, grid, names

    def forward(self, *tensors):
        values = dict(zip(self.names, tensors, strict=True), grid=self.grid, constant=torch.tensor)
        return self.method.select(values, self.keep, **self.params)


def export_bucketed_vision(encoder_gm, adapter, method, params: dict, buckets: list[int], out: Path) -> dict[str, Path]:
    layout = adapter.vision
    dtype = next(adapter.model.parameters()).dtype
    sample = torch.zeros(2, 3, layout.image_size, layout.image_size, dtype=dtype)
    names = selection_input_names(method)
    paths = {
        ENCODER: export_onnx(
            encoder_gm,
            (sample,),
            out / f"{ENCODER}.onnx",
            input_names=["pixel_values"],
            output_names=names,
            dynamic_shapes={"pixel_values": {0: batch_dim()}},
            axis_names={"pixel_values": {0: "batch"}},
        )
    }
    with torch.no_grad():
        encoded = dict(zip(names, encoder_gm(sample), strict=True))
    inputs = [n for n in names if n != ADAPTIVE]
    side = int(round(layout.num_patches**0.5))
    token_output = "image_features" if method.stage == POST_PROJECTOR else "tokens"
    for keep in buckets:
        module = BucketSelector(method, params, keep, (side, side), inputs).eval()
        batch = batch_dim()
        paths[selector_name(keep)] = export_onnx(
            module,
            tuple(encoded[n] for n in inputs),
            out / f"{selector_name(keep)}.onnx",
            input_names=inputs,
            output_names=["kept_indices", token_output],
            dynamic_shapes={"tensors": tuple({0: batch} for _ in inputs)},
            axis_names={n: {0: "batch"} for n in inputs},
        )
    if method.stage != POST_PROJECTOR:
        tokens = torch.zeros(2, 3, encoded["patches"].shape[-1], dtype=dtype)
        count = torch.export.Dim("tokens", min=1, max=layout.num_patches)
        paths[PROJECTOR] = export_onnx(
            adapter.model.model.multi_modal_projector,
            (tokens,),
            out / f"{PROJECTOR}.onnx",
            input_names=["tokens"],
            output_names=["image_features"],
            dynamic_shapes=({0: batch_dim(), 1: count},),
            axis_names={"tokens": {0: "batch", 1: "tokens"}},
        )
    return paths
