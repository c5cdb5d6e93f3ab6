"""The LLM-input selection kernels in ONNX Runtime: CDPruner unrolled against an ONNX Loop, and DART.

    python benchmarks/cdpruner_loop.py                 # print one JSON line per setting
    python benchmarks/cdpruner_loop.py --write         # also write the BENCHMARKS.md section

One image span of --tokens rows of width --width (the decoder's hidden size, where the
LLM-input stage runs: 1536 in the bench presets, whose projector maps the 1024-wide vision
features into it) and a prompt of --text-tokens real rows, batch 1, medians of --repeats
runs after one warm-up.

CDPruner's unrolled form is ``cdpruner_select`` exported as tpc exports it (``keep``
greedy steps, each with a prefix of the Cholesky rows). The Loop form exports the same
kernel matrix (``conditional_kernel``) and runs the greedy in an ONNX Loop whose state has
constant shapes only (gains [B,n], Cholesky rows [B,keep,n] zero-filled ahead of the
current step, picks [B,keep] written with ScatterElements; no scan outputs), the form
TensorRT's Loop rules allow. Both must select the same tokens; the script checks that.
DART has one form (a handful of pivots, no long loop): its exported kernel is timed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from common import ROOT, write_section
from onnx import TensorProto, helper

from tpc.methods.cdpruner import cdpruner_select, conditional_kernel
from tpc.methods.dart import dart_select

MARK = "<!-- llm-input-kernels -->"
F32, I64 = TensorProto.FLOAT, TensorProto.INT64


class _Select(torch.nn.Module):
    def __init__(self, select, keep: int):
        super().__init__()
        self.select, self.keep = select, keep

    def forward(self, image, text, text_mask):
        return self.select(image, text, text_mask, self.keep)


class _Kernel(torch.nn.Module):
    def forward(self, image, text, text_mask):
        return conditional_kernel(image, text, text_mask)


def export(module: torch.nn.Module, path: Path, sample: tuple, output: str) -> None:
    batch = torch.export.Dim("batch", min=1, max=8)
    seq = torch.export.Dim("seq", min=1, max=4096)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter's stage chatter
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            sample,
            str(path),
            dynamo=True,
            input_names=["image", "text", "text_mask"],
            output_names=[output],
            dynamic_shapes={"image": {0: batch}, "text": {0: batch, 1: seq}, "text_mask": {0: batch, 1: seq}},
        )


def _const(name: str, values, dtype=I64) -> onnx.NodeProto:
    values = values if isinstance(values, list) else [values]
    dims = [] if name.endswith("_s") else [len(values)]
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, dims, values))


def _greedy_body() -> onnx.GraphProto:
    """One greedy step on constant-shape state; reads ``kernel`` and the shapes from the outer graph."""
    node = helper.make_node
    nodes = [
        node("ArgMax", ["gains_in"], ["pick"], axis=1, keepdims=1),  # [B,1], first index on ties
        node("Unsqueeze", ["pick", "last"], ["pick3"]),
        node("Expand", ["pick3", "shape_b1n"], ["row_index"]),
        node("GatherElements", ["kernel", "row_index"], ["k_row"], axis=1),  # K_j [B,1,n]
        node("Expand", ["pick3", "shape_bk1"], ["coeff_index"]),
        node("GatherElements", ["rows_in", "coeff_index"], ["coeff"], axis=2),  # c_s[j] [B,keep,1]
        node("Transpose", ["coeff"], ["coeff_t"], perm=[0, 2, 1]),
        node("MatMul", ["coeff_t", "rows_in"], ["projection"]),  # rows ahead of the step are zero
        node("Sub", ["k_row", "projection"], ["numerator"]),
        node("GatherElements", ["gains_in", "pick"], ["gain"], axis=1),
        node("Unsqueeze", ["gain", "last"], ["gain3"]),
        node("Greater", ["gain3", "zero_f"], ["positive"]),
        node("Where", ["positive", "gain3", "one_f"], ["safe_gain"]),
        node("Sqrt", ["safe_gain"], ["root"]),
        node("Div", ["numerator", "root"], ["scaled"]),
        node("Where", ["positive", "scaled", "zero_f"], ["row"]),  # [B,1,n]
        node("Squeeze", ["row", "one"], ["row2"]),
        node("Mul", ["row2", "row2"], ["row_sq"]),
        node("Sub", ["gains_in", "row_sq"], ["gains_left"]),
        node("ScatterElements", ["gains_left", "pick", "minus_inf_b1"], ["gains_out"], axis=1),
        node("Reshape", ["iter", "one"], ["iter1"]),
        node("Expand", ["iter1", "shape_b1n"], ["slot_rows"]),
        node("ScatterElements", ["rows_in", "slot_rows", "row"], ["rows_out"], axis=1),
        node("Expand", ["iter1", "shape_b1"], ["slot_picks"]),
        node("ScatterElements", ["picks_in", "slot_picks", "pick"], ["picks_out"], axis=1),
        node("Identity", ["cond_in"], ["cond_out"]),
    ]
    return helper.make_graph(
        nodes,
        "cdpruner_step",
        [
            helper.make_tensor_value_info("iter", I64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("gains_in", F32, None),
            helper.make_tensor_value_info("rows_in", F32, None),
            helper.make_tensor_value_info("picks_in", I64, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("gains_out", F32, None),
            helper.make_tensor_value_info("rows_out", F32, None),
            helper.make_tensor_value_info("picks_out", I64, None),
        ],
    )


def loop_model(kernel_path: Path, path: Path, keep: int) -> None:
    """The exported kernel-matrix graph with the greedy appended as an ONNX Loop."""
    model = onnx.load(str(kernel_path))
    node = helper.make_node
    nodes = [
        _const("last", [-1]),
        _const("one", [1]),
        _const("zero", [0]),
        _const("two", [2]),
        _const("keep", [keep]),
        _const("zero_s", 0),
        _const("one_s", 1),
        _const("trips_s", keep),
        _const("true_s", 1, TensorProto.BOOL),
        _const("zero_f", [0.0], F32),
        _const("one_f", [1.0], F32),
        node("Shape", ["kernel"], ["kernel_shape"]),  # [B,n,n]
        node("Slice", ["kernel_shape", "zero", "one"], ["dim_b"]),
        node("Slice", ["kernel_shape", "one", "two"], ["dim_n"]),
        node("Concat", ["dim_b", "one", "dim_n"], ["shape_b1n"], axis=0),
        node("Concat", ["dim_b", "keep", "one"], ["shape_bk1"], axis=0),
        node("Concat", ["dim_b", "one"], ["shape_b1"], axis=0),
        node("Concat", ["dim_b", "keep", "dim_n"], ["shape_bkn"], axis=0),
        node("Concat", ["dim_b", "keep"], ["shape_bk"], axis=0),
        node("Concat", ["dim_b", "dim_n", "one"], ["shape_bn1"], axis=0),
        node("ConstantOfShape", ["shape_b1"], ["minus_inf_b1"], value=helper.make_tensor("v", F32, [1], [-np.inf])),
        # the diagonal K_ii: GatherElements along the last axis with index i in row i
        node("Squeeze", ["dim_n"], ["n_s"]),
        node("Range", ["zero_s", "n_s", "one_s"], ["arange"]),
        node("Unsqueeze", ["arange", "last"], ["arange_col"]),
        node("Expand", ["arange_col", "shape_bn1"], ["diagonal_index"]),
        node("GatherElements", ["kernel", "diagonal_index"], ["diagonal"], axis=2),
        node("Squeeze", ["diagonal", "last"], ["gains0"]),
        node("ConstantOfShape", ["shape_bkn"], ["rows0"], value=helper.make_tensor("z", F32, [1], [0.0])),
        node("ConstantOfShape", ["shape_bk"], ["picks0"], value=helper.make_tensor("p", I64, [1], [0])),
        node(
            "Loop",
            ["trips_s", "true_s", "gains0", "rows0", "picks0"],
            ["gains_f", "rows_f", "picks"],
            body=_greedy_body(),
        ),
        node("TopK", ["picks", "keep"], ["kept", "kept_order"], axis=1, largest=0, sorted=1),
    ]
    model.graph.node.extend(nodes)
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("kept", I64, ["batch", keep]))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def timed(session: ort.InferenceSession, feeds: dict, repeats: int) -> tuple[float, np.ndarray]:
    out = session.run(None, feeds)[0]
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = session.run(None, feeds)[0]
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples), out


def _inputs(tokens: int, width: int, text_tokens: int, batch: int, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, tokens, width, generator=g)
    text = torch.randn(batch, text_tokens, width, generator=g)
    return image, text, torch.ones(batch, text_tokens, dtype=torch.bool)


def _nodes(path: Path) -> int:
    return len(onnx.load(str(path), load_external_data=False).graph.node)


def measure(tokens: int, width: int, keep: int, text_tokens: int, repeats: int) -> list[dict]:
    sample = _inputs(tokens, width, text_tokens, batch=2)
    image, text, mask = _inputs(tokens, width, text_tokens, batch=1, seed=1)
    feeds = {"image": image.numpy(), "text": text.numpy(), "text_mask": mask.numpy()}
    common = {"tokens": tokens, "width": width, "text_tokens": text_tokens, "keep": keep, "batch": 1}
    with tempfile.TemporaryDirectory() as tmp:
        unrolled, kernel, looped, dart = (Path(tmp, f"{name}.onnx") for name in ("unrolled", "kernel", "loop", "dart"))
        export(_Select(cdpruner_select, keep), unrolled, sample, "kept")
        export(_Kernel(), kernel, sample, "kernel")
        loop_model(kernel, looped, keep)
        export(_Select(dart_select, keep), dart, sample, "kept")
        u_ms, u_out = timed(ort.InferenceSession(str(unrolled)), feeds, repeats)
        l_ms, l_out = timed(ort.InferenceSession(str(looped)), feeds, repeats)
        k_ms, _ = timed(ort.InferenceSession(str(kernel)), feeds, repeats)
        d_ms, d_out = timed(ort.InferenceSession(str(dart)), feeds, repeats)
        eager = cdpruner_select(image, text, mask, keep).numpy()
        rows = [
            {
                "kernel": "cdpruner",
                **common,
                "unrolled_ms": round(u_ms, 3),
                "loop_ms": round(l_ms, 3),
                "kernel_matrix_ms": round(k_ms, 3),
                "same_selection": bool(np.array_equal(u_out, l_out) and np.array_equal(u_out, eager)),
                "nodes": {"unrolled": _nodes(unrolled), "loop": _nodes(looped)},
            },
            {
                "kernel": "dart",
                **common,
                "ms": round(d_ms, 3),
                "same_selection": bool(np.array_equal(d_out, dart_select(image, text, mask, keep).numpy())),
                "nodes": _nodes(dart),
            },
        ]
    return rows


def write_kernels_section(path: Path, rows: list[dict]) -> None:
    first = rows[0]
    lines = [
        "### LLM-input selection kernels: CDPruner unrolled or an ONNX Loop, and DART",
        "",
        f"`python benchmarks/cdpruner_loop.py --write`: one image span of {first['tokens']} rows of width "
        f"{first['width']} (the bench presets' decoder width, where the LLM-input stage runs) and a "
        f"{first['text_tokens']}-row prompt, batch 1, ONNX Runtime CPU, medians; the selection alone. The Loop "
        "form runs the same greedy on constant-shape state (TensorRT's Loop rules); 'same selection' compares "
        "it with the unrolled graph and the eager kernel. Kernel matrix = relevance and diag(r) S diag(r) only.",
        "",
        "| kernel | keep | unrolled ms | Loop ms | kernel matrix ms | same selection | nodes (unrolled / Loop) |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        if r["kernel"] == "cdpruner":
            lines.append(
                f"| CDPruner | {r['keep']} | {r['unrolled_ms']:.2f} | {r['loop_ms']:.2f} | "
                f"{r['kernel_matrix_ms']:.2f} | {r['same_selection']} | "
                f"{r['nodes']['unrolled']} / {r['nodes']['loop']} |"
            )
        else:
            lines.append(f"| DART | {r['keep']} | {r['ms']:.2f} | - | - | {r['same_selection']} | {r['nodes']} / - |")
    write_section(path, MARK, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=576)
    parser.add_argument("--width", type=int, default=1536, help="embedding width at the LLM input")
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--keeps", default="64,128", help="comma-separated kept-token counts")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--write", action="store_true", help="write the section of --output")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    rows = []
    for keep in (int(k) for k in args.keeps.split(",")):
        for row in measure(args.tokens, args.width, keep, args.text_tokens, args.repeats):
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.write:
        write_kernels_section(args.output, rows)


if __name__ == "__main__":
    main()
