"""The LLM-input prune point: the weightless ``select_input`` graph between ``embed`` and the decoder.

It takes the assembled input embeddings, keeps ``keep`` rows of the image span (DART or
CDPruner, ``tpc.methods.llm_input``) and every other row, and returns the shortened
embeddings, their ORIGINAL position ids (gathered: the gaps stay), the shortened mask
and the kept indices. Rows are gathered with ``stage_index``, the in-LLM selectors' own
index (text before the span, the kept span rows, text after).

One graph per span length: CDPruner's greedy MAP runs exactly ``keep`` unrolled steps
and DART's image-pivot count is ``min(image_pivots, keep)``, so the span length and its
quota are compile-time constants of each graph (TopK's K is a constant, as TensorRT
wants). The lengths are the family's ``image_token_counts`` at the pre-LLM budget: one
for a single-crop family, one per crop count of the pinpoints for pruned crops. Unpruned
multi-crop pictures (lengths that follow the aspect ratio, no finite set) are refused
for now with a one-line error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from tpc.artifact_layout import INPUT_SELECT_INPUTS, INPUT_SELECT_OUTPUTS, input_select_name
from tpc.compiler.onnx_export import export_onnx
from tpc.compiler.trace import batch_dim
from tpc.errors import UsageError
from tpc.methods.llm_input import check_input_args, input_keep, input_kernel, parse_input_args
from tpc.models.decoder_segments import stage_index


class InputSelect(nn.Module):
    """Keep ``keep`` of the ``length`` image rows starting at ``image_start`` (per sample) + every other row."""

    def __init__(self, method: str, params: dict[str, Any], length: int, keep: int):
        super().__init__()
        self.select = input_kernel(method)
        self.params, self.length, self.keep = dict(params), length, keep

    def forward(self, inputs_embeds, attention_mask, position_ids, image_start, text_mask):
        width = inputs_embeds.shape[-1]
        rows = image_start[:, None] + torch.arange(self.length, device=inputs_embeds.device)[None, :]
        image = torch.gather(inputs_embeds, 1, rows.unsqueeze(-1).expand(-1, -1, width))
        kept = self.select(image, inputs_embeds, text_mask, self.keep, **self.params)
        index = stage_index(image_start, kept, inputs_embeds.shape[1], self.length - self.keep)
        embeds = torch.gather(inputs_embeds, 1, index.unsqueeze(-1).expand(-1, -1, width))
        if position_ids.dim() == 3:  # M-RoPE (t, h, w): every kept row keeps its three
            positions = torch.gather(position_ids, 1, index.unsqueeze(-1).expand(-1, -1, position_ids.shape[-1]))
        else:
            positions = torch.gather(position_ids, 1, index)
        return embeds, positions, torch.gather(attention_mask, 1, index), kept


def input_plan(settings, adapter, keep: int) -> dict[str, Any]:
    """The ``runtime["input_selection"]`` entry: method, parameters, ratio, and per span length its quota
    and graph. Raises a one-line ``UsageError`` before anything is traced."""
    name = settings.input_method
    params = parse_input_args(name, {k: str(v) for k, v in settings.input_method_args.items()})
    lengths = adapter.image_token_counts(keep)
    if lengths is None:
        raise UsageError(
            f"selection at the LLM input ({name}) on unpruned multi-crop pictures (span lengths follow the aspect "
            "ratio) is not supported yet; add a pre-LLM --method with --ratio/--keep"
        )
    quotas = {n: input_keep(n, settings.input_ratio) for n in sorted(set(lengths))}
    for n, k in quotas.items():
        check_input_args(name, params, n, k)
    single = len(quotas) == 1
    return {
        "method": name,
        "parameters": params,
        "ratio": settings.input_ratio,
        "spans": {str(n): {"keep": k, "graph": input_select_name(n, single)} for n, k in quotas.items()},
    }


def export_input_selectors(
    plan: dict[str, Any], hidden_size: int, max_context: int, out_dir: Path, dims: int = 1
) -> dict[str, Path]:
    """One ``select_input`` graph per span length of ``plan`` (batch and sequence length dynamic); ``dims``:
    3 for M-RoPE position ids [B, T, 3]."""
    paths = {}
    for length, span in plan["spans"].items():
        n = int(length)
        module = InputSelect(plan["method"], plan["parameters"], n, span["keep"]).eval()
        b, t = 2, n + 7  # distinct sizes so the tracer keeps the axes apart
        generator = torch.Generator().manual_seed(n)
        mask = torch.ones(b, t, dtype=torch.int64)
        text_mask = mask.clone()
        text_mask[0, 2 : 2 + n] = 0
        text_mask[1, 3 : 3 + n] = 0
        positions = torch.arange(t).expand(b, t)
        if dims > 1:
            positions = positions[..., None].expand(b, t, dims)
        args = (
            torch.randn(b, t, hidden_size, generator=generator),
            mask,
            positions.contiguous(),
            torch.tensor([2, 3], dtype=torch.int64),
            text_mask,
        )
        batch = batch_dim()
        seq = torch.export.Dim("seq", min=n + 1, max=max_context)
        per_token = {"inputs_embeds", "attention_mask", "position_ids", "text_mask"}
        paths[span["graph"]] = export_onnx(
            module,
            args,
            out_dir / f"{span['graph']}.onnx",
            input_names=INPUT_SELECT_INPUTS,
            output_names=INPUT_SELECT_OUTPUTS,
            dynamic_shapes={
                "inputs_embeds": {0: batch, 1: seq},
                "attention_mask": {0: batch, 1: seq},
                "position_ids": {0: batch, 1: seq},
                "image_start": {0: batch},
                "text_mask": {0: batch, 1: seq},
            },
            axis_names={name: {0: "batch", 1: "seq"} for name in INPUT_SELECT_INPUTS if name in per_token},
        )
    return paths


def method_label(settings, label: str) -> str:
    """The manifest's method name: ``dart`` alone, or ``fastervlm+dart`` when composed."""
    if settings.input_method is None:
        return label
    if settings.method is None and settings.ratio is None and settings.keep is None:
        return settings.input_method
    return f"{label}+{settings.input_method}"


def prepare_input_stage(settings, adapter, keep: int) -> dict[str, Any] | None:
    """The plan of the LLM-input stage (None without ``--input-method``); refusals come before any tracing."""
    return None if settings.input_method is None else input_plan(settings, adapter, keep)


def export_input_stage(plan: dict[str, Any] | None, adapter, out_dir: Path) -> dict[str, Path]:
    if plan is None:
        return {}
    text = adapter.text
    return export_input_selectors(plan, text.hidden_size, text.max_context, out_dir, text.position_dims)


def check_input_stage(graphs, adapter, runtime: dict) -> dict[str, Any]:
    """``verify_input_stage``; a disagreement is a ``ParityError`` naming what failed."""
    from tpc.compiler.verify_input import failures, verify_input_stage
    from tpc.errors import ParityError

    report = verify_input_stage(graphs, adapter, runtime)
    bad = failures(report)
    if bad:
        raise ParityError("compiled LLM-input selection disagrees with the reference: " + "; ".join(bad))
    return report
