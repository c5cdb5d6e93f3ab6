"""Export of the decoder cut at in-LLM pruning stages: ``decoder_0..S`` and ``select_1..S``.

``decoder_s`` runs the layers of segment s for prefill and decode; stage s's ``select_s``
(weightless) shortens the sequence between ``decoder_{s-1}`` and ``decoder_s`` at prefill.
Each segment's past keys/values have their own length axis ``past_seq_s``: that is how
the decode graphs take per-layer KV lengths. The graph and input/output names live in
``tpc.artifact_layout`` (shared with the runtimes, torch-free) and are re-exported here.

A DART stage (``Stage.rule == "dart"``) gets a segment that scores by its layer's key L1 norms
and also outputs ``normed_hidden``, and a ``DartStageSelect`` that takes it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tpc.artifact_layout import (
    DYNAMIC_SELECT_INPUTS,
    NORMED_HIDDEN,
    SELECT_INPUTS,
    SELECT_OUTPUTS,
    segment_io,
    segment_kv_names,
    segment_name,
    select_inputs,
    select_name,
    stage_inputs,
)
from tpc.compiler.onnx_export import export_onnx
from tpc.compiler.trace import batch_dim
from tpc.methods.in_llm import DART, RENUMBERED, PruningPlan
from tpc.models.base import TextLayout
from tpc.models.decoder_segments import (
    DartStageSelect,
    DecoderSegment,
    DynamicDartStageSelect,
    DynamicStageSelect,
    StageSelect,
)


def export_segment(model, plan: PruningPlan, index: int, text: TextLayout, out_dir: Path) -> Path:
    start, end = plan.segments()[index]
    stage = plan.stages[index] if index < len(plan.stages) else None
    score = "key_norm" if stage is not None and stage.rule == DART else "attention"
    module = DecoderSegment(model, start, end, stage.score_layer if stage else None, score).eval()
    dtype = next(model.parameters()).dtype  # half-precision segments take and carry half-precision values
    b, s, p = 2, 5, 3  # distinct sample sizes so the tracer keeps the axes apart
    embeds = torch.zeros(b, s, text.hidden_size, dtype=dtype)
    mask = torch.ones(b, p + s, dtype=torch.int64)
    positions = _positions(torch.arange(p, p + s).expand(b, s), text.position_dims)
    past = tuple(torch.zeros(b, text.num_kv_heads, p, text.head_dim, dtype=dtype) for _ in range(2 * (end - start)))
    inputs, outputs = segment_io(plan, index)
    batch = batch_dim()
    seq = torch.export.Dim("seq", min=1, max=text.max_context)
    past_seq = torch.export.Dim(f"past_seq_{index}", min=0, max=text.max_context)
    total = torch.export.Dim(f"total_seq_{index}", min=1, max=2 * text.max_context)
    axis_names = {inputs[0]: {0: "batch", 1: "seq"}, "attention_mask": {1: f"total_seq_{index}"}}
    axis_names.update({name: {2: f"past_seq_{index}"} for name in inputs[3:]})
    return export_onnx(
        module,
        (embeds, mask, positions, past),
        out_dir / f"{segment_name(index)}.onnx",
        input_names=inputs,
        output_names=outputs,
        dynamic_shapes={
            "hidden": {0: batch, 1: seq},
            "attention_mask": {0: batch, 1: total},
            "position_ids": {0: batch, 1: seq},
            "past": tuple({0: batch, 2: past_seq} for _ in inputs[3:]),
        },
        axis_names=axis_names,
    )


def _positions(positions: torch.Tensor, dims: int) -> torch.Tensor:
    """1-D sample position ids [B, S], or M-RoPE ones [B, S, dims] (t, h, w)."""
    if dims == 1:
        return positions.contiguous()
    return positions[..., None].expand(*positions.shape, dims).contiguous()


def _select_sample(t: int, hidden_size: int, seed: int, dims: int = 1, dtype=torch.float32) -> tuple:
    """Example ``SELECT_INPUTS`` for tracing: a batch of 2 sequences of ``t`` rows, blocks at rows 2 and 3;
    ``hidden`` in the segments' dtype, the score in fp32 (the segments compute it in fp32)."""
    b = 2
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, t, hidden_size, generator=generator).to(dtype),
        torch.rand(b, t, generator=generator),
        _positions(torch.arange(t).expand(b, t), dims),
        torch.ones(b, t, dtype=torch.int64),
        torch.tensor([2, 3], dtype=torch.int64),
    )


def _select_shapes(batch, seq, dart: bool = False) -> dict:
    """The export dims of a stage selector's ``SELECT_INPUTS``: batch, and the sequence of the first four
    (and of ``normed_hidden``, DART's)."""
    shapes = {**{name: {0: batch, 1: seq} for name in SELECT_INPUTS[:4]}, "image_start": {0: batch}}
    return {**shapes, NORMED_HIDDEN: {0: batch, 1: seq}} if dart else shapes


def _select_axes(dart: bool = False) -> dict:
    names = [*SELECT_INPUTS[:4], *([NORMED_HIDDEN] if dart else [])]
    return {name: {0: "batch", 1: "seq"} for name in names}


def _normed_sample(args: tuple, seed: int) -> torch.Tensor:
    """An example ``normed_hidden`` shaped like the sample's ``hidden`` (its ``score`` stands for key norms)."""
    generator = torch.Generator().manual_seed(seed + 100)
    return torch.randn(args[0].shape, generator=generator).to(args[0].dtype)


def export_select(
    plan: PruningPlan,
    stage: int,
    hidden_size: int,
    max_context: int,
    out_dir: Path,
    bucket: int | None = None,
    dims: int = 1,
    dtype: torch.dtype = torch.float32,
) -> Path:
    spec = plan.stages[stage - 1]
    n_in = stage_inputs(plan, stage)
    dart = spec.rule == DART
    args = _select_sample(n_in + 7, hidden_size, stage, dims, dtype)
    if dart:
        params = plan.parameters
        module = DartStageSelect(n_in, spec.keep, params["image_pivots"], params["text_pivots"]).eval()
        args = (*args, _normed_sample(args, stage))
    else:
        module = StageSelect(n_in, spec.keep, spec.positions == RENUMBERED).eval()
    batch = batch_dim()
    seq = torch.export.Dim("seq", min=n_in + 1, max=max_context)
    return export_onnx(
        module,
        args,
        out_dir / f"{select_name(stage, bucket)}.onnx",
        input_names=select_inputs(plan, stage),
        output_names=SELECT_OUTPUTS,
        dynamic_shapes=_select_shapes(batch, seq, dart),
        axis_names=_select_axes(dart),
    )


def export_dynamic_select(
    plan: PruningPlan,
    stage: int,
    hidden_size: int,
    max_context: int,
    out_dir: Path,
    dims: int = 1,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Stage ``stage``'s selector for image blocks of any length (``DYNAMIC_SELECT_INPUTS``)."""
    spec = plan.stages[stage - 1]
    dart = spec.rule == DART
    n, keep = 6, 4  # distinct sizes so the tracer keeps the axes apart
    args = (*_select_sample(n + 7, hidden_size, stage, dims, dtype), torch.arange(n), torch.arange(keep))
    if dart:
        params = plan.parameters
        module = DynamicDartStageSelect(params["image_pivots"], params["text_pivots"]).eval()
        args = (*args, _normed_sample(args, stage))
    else:
        module = DynamicStageSelect(spec.positions == RENUMBERED).eval()
    seq = torch.export.Dim("seq", min=2, max=max_context)
    rows = torch.export.Dim("image_rows", min=1, max=max_context)
    kept = torch.export.Dim("keep_rows", min=1, max=max_context)
    batch = batch_dim()
    return export_onnx(
        module,
        args,
        out_dir / f"{select_name(stage)}.onnx",
        input_names=select_inputs(plan, stage, dynamic=True),
        output_names=SELECT_OUTPUTS,
        # in the order of the module's inputs (the exporter matches them by position)
        dynamic_shapes={
            **_select_shapes(batch, seq),
            "image_rows": {0: rows},
            "keep_rows": {0: kept},
            **({NORMED_HIDDEN: {0: batch, 1: seq}} if dart else {}),
        },
        axis_names={**_select_axes(dart), "image_rows": {0: "image_rows"}, "keep_rows": {0: "keep_rows"}},
    )


def export_staged_decoder(
    model, plans: dict[int | None, PruningPlan], text: TextLayout, out_dir: Path, dynamic: bool = False
) -> dict[str, Path]:
    """Segments once; selectors per stage, and per bucket when the keys are bucket sizes (None: fixed K).

    The segments depend only on the stage layers, which every bucket's plan shares. ``dynamic``: one
    selector per stage for image blocks of any length (``plans`` then holds one representative plan).
    """
    first = next(iter(plans.values()))
    dtype = next(model.parameters()).dtype
    paths = {}
    for index in range(len(first.segments())):
        paths[segment_name(index)] = export_segment(model, first, index, text, out_dir)
        if index < len(first.stages) and dynamic:
            paths[select_name(index + 1)] = export_dynamic_select(
                first, index + 1, text.hidden_size, text.max_context, out_dir, text.position_dims, dtype
            )
        elif index < len(first.stages):
            for bucket, plan in plans.items():
                paths[select_name(index + 1, bucket)] = export_select(
                    plan, index + 1, text.hidden_size, text.max_context, out_dir, bucket, text.position_dims, dtype
                )
    return paths


__all__ = [
    "DYNAMIC_SELECT_INPUTS",
    "NORMED_HIDDEN",
    "SELECT_INPUTS",
    "SELECT_OUTPUTS",
    "export_dynamic_select",
    "export_segment",
    "export_select",
    "export_staged_decoder",
    "segment_io",
    "segment_kv_names",
    "segment_name",
    "select_inputs",
    "select_name",
    "stage_inputs",
]
