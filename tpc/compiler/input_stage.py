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
for a single-crop family, one per crop count of the pinpoints for pruned crops.

Unpruned multi-crop pictures (lengths that follow the aspect ratio, no finite set) get ONE
selector for spans of any length (``DynamicInputSelect``): the span length and the quota are
the lengths of two inputs, ``image_rows`` and ``keep_rows``. DART masks its static pivot
slots; CDPruner's greedy becomes an ONNX Loop whose trip count is ``len(keep_rows)``
(``tpc.compiler.greedy_loop``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from tpc.artifact_layout import INPUT_SELECT_INPUTS, INPUT_SELECT_OUTPUTS, input_select_name
from tpc.compiler.onnx_export import export_onnx
from tpc.compiler.trace import batch_dim
from tpc.methods.llm_input import check_input_args, input_keep, input_kernel, parse_input_args
from tpc.models.decoder_segments import stage_index


class InputSelect(nn.Module):
    """Keep ``keep`` of the ``length`` image rows starting at ``image_start`` (per sample) + every other row."""

    def __init__(self, method: str, params: dict[str, Any], length: int, keep: int):
        super().__init__()
        self.select = input_kernel(method)
        self.params, self.length, self.keep = dict(params), length, keep

    def forward(self, inputs_embeds, attention_mask, position_ids, image_start, text_mask):
        offsets = torch.arange(self.length, device=inputs_embeds.device)
        image = _span(inputs_embeds, image_start, offsets)
        kept = self.select(image, inputs_embeds, text_mask, self.keep, **self.params)
        return _survivors(inputs_embeds, attention_mask, position_ids, image_start, kept, self.length - self.keep)


def any_length_kernel(method: str):
    """``select(image [B,n,D], text, text_mask, keep_rows [keep], **params) -> kept [B,keep]``."""
    if method == "dart":
        from tpc.methods.dart import dart_select_any_length

        return dart_select_any_length
    from tpc.methods.cdpruner import cdpruner_select_any_length

    return cdpruner_select_any_length


class DynamicInputSelect(nn.Module):
    """DART or CDPruner on an image span of any length (unpruned multi-crop pictures): the span length and its
    quota come from the lengths of ``image_rows`` (= arange(n)) and ``keep_rows`` (= arange(keep)), shapes
    rather than values, as the in-LLM selectors for any block length take them."""

    def __init__(self, params: dict[str, Any], method: str = "dart"):
        super().__init__()
        self.select, self.params = any_length_kernel(method), dict(params)

    def forward(self, inputs_embeds, attention_mask, position_ids, image_start, text_mask, image_rows, keep_rows):
        image = _span(inputs_embeds, image_start, image_rows)
        kept = self.select(image, inputs_embeds, text_mask, keep_rows, **self.params)
        dropped = image_rows.shape[0] - keep_rows.shape[0]
        return _survivors(inputs_embeds, attention_mask, position_ids, image_start, kept, dropped)


def _span(inputs_embeds, image_start, offsets):
    rows = image_start[:, None] + offsets[None, :]
    return torch.gather(inputs_embeds, 1, rows.unsqueeze(-1).expand(-1, -1, inputs_embeds.shape[-1]))


def _survivors(inputs_embeds, attention_mask, position_ids, image_start, kept, dropped):
    """The shortened rows (text before the span, the kept span rows, text after) at their ORIGINAL positions."""
    index = stage_index(image_start, kept, inputs_embeds.shape[1], dropped)
    embeds = torch.gather(inputs_embeds, 1, index.unsqueeze(-1).expand(-1, -1, inputs_embeds.shape[-1]))
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
    lengths = adapter.image_token_counts(keep, several_pictures=True)  # spans of pictures alone or with others
    if lengths is None:  # unpruned multi-crop: the span length follows each picture's aspect ratio
        longest = adapter.max_image_tokens(keep)
        check_input_args(name, params, longest, input_keep(longest, settings.input_ratio))
        return {
            "method": name,
            "parameters": params,
            "ratio": settings.input_ratio,
            "spans": {},
            "any_length": {"graph": input_select_name(0, True), "max_image_tokens": longest},
        }
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
    """One ``select_input`` graph per span length of ``plan`` (batch and sequence length dynamic), or one for
    spans of any length (``plan["any_length"]``); ``dims``: 3 for M-RoPE position ids [B, T, 3]."""
    if plan.get("any_length"):
        return export_any_length_selector(plan, hidden_size, max_context, out_dir, dims)
    paths = {}
    for length, span in plan["spans"].items():
        n = int(length)
        module = InputSelect(plan["method"], plan["parameters"], n, span["keep"]).eval()
        args = _sample(n, hidden_size, dims)
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


def _sample(n: int, hidden_size: int, dims: int) -> tuple:
    """Example inputs: a batch of 2 prompts of n + 7 rows, spans of n rows at rows 2 and 3."""
    b, t = 2, n + 7  # distinct sizes so the tracer keeps the axes apart
    generator = torch.Generator().manual_seed(n)
    mask = torch.ones(b, t, dtype=torch.int64)
    text_mask = mask.clone()
    text_mask[0, 2 : 2 + n] = 0
    text_mask[1, 3 : 3 + n] = 0
    positions = torch.arange(t).expand(b, t)
    if dims > 1:
        positions = positions[..., None].expand(b, t, dims)
    return (
        torch.randn(b, t, hidden_size, generator=generator),
        mask,
        positions.contiguous(),
        torch.tensor([2, 3], dtype=torch.int64),
        text_mask,
    )


def export_any_length_selector(plan: dict[str, Any], hidden_size: int, max_context: int, out_dir: Path, dims: int):
    """The one selector for spans of any length: ``image_rows``/``keep_rows`` lengths set n and the quota.
    CDPruner's greedy calls are exported as placeholders and spliced into ONNX Loops."""
    from tpc.artifact_layout import DYNAMIC_INPUT_SELECT_INPUTS

    graph = plan["any_length"]["graph"]
    n, keep = 9, 5  # distinct sizes so the tracer keeps the axes apart
    args = (*_sample(n, hidden_size, dims), torch.arange(n), torch.arange(keep))
    batch = batch_dim()
    seq = torch.export.Dim("seq", min=2, max=max_context)
    rows = torch.export.Dim("image_rows", min=1, max=max_context)
    kept = torch.export.Dim("keep_rows", min=1, max=max_context)
    per_token = ("inputs_embeds", "attention_mask", "position_ids", "text_mask")
    export = export_onnx
    if plan["method"] == "cdpruner":
        from tpc.compiler.greedy_loop import export_with_greedy_loops as export
    return {
        graph: export(
            DynamicInputSelect(plan["parameters"], plan["method"]).eval(),
            args,
            out_dir / f"{graph}.onnx",
            input_names=DYNAMIC_INPUT_SELECT_INPUTS,
            output_names=INPUT_SELECT_OUTPUTS,
            dynamic_shapes={  # in the inputs' order: the exporter pairs them by position
                **{name: {0: batch, 1: seq} for name in per_token[:3]},
                "image_start": {0: batch},
                "text_mask": {0: batch, 1: seq},
                "image_rows": {0: rows},
                "keep_rows": {0: kept},
            },
            axis_names={
                **{name: {0: "batch", 1: "seq"} for name in per_token},
                "image_rows": {0: "image_rows"},
                "keep_rows": {0: "keep_rows"},
            },
        )
    }


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
