"""CDPruner's greedy MAP as an ONNX Loop whose trip count is an input's length.

``greedy_map_rows(kernel, steps_rows)`` (``tpc.methods.cdpruner``) exports as one placeholder
node ``tpc.cdpruner::GreedyMap(kernel [B,n,n], steps_rows [k]) -> picks [B,k]`` (a custom
translation); ``splice_greedy_loops`` then replaces each placeholder by the greedy:

    before:  kernel ─► GreedyMap(kernel, steps_rows) ─► picks
    after:   trips = Squeeze(Shape(steps_rows))                      (a shape: TensorRT's kCOUNT limit)
             gains0 = diag(kernel), rows0 = 0 [B,k,n], picks0 = 0 [B,k]
             Loop(trips, -, gains0, rows0, picks0) ─► (gains, rows, picks)

Every loop-carried value keeps one shape through the steps (TensorRT's recurrences): the
Cholesky rows are zero-filled ahead of the current step (zeros add nothing to the projection),
picks are written with ScatterElements; no scan output, no early exit. One step is
``greedy_map``'s step: ArgMax (first index on ties), e = (K_j - sum_s c_s[j] c_s) / d_j when
d_j^2 > 0 else 0, gains -= e^2, the picked gain set to -inf.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import TensorProto, helper

from tpc.errors import ExportError

log = logging.getLogger(__name__)

DOMAIN, OP = "tpc.cdpruner", "GreedyMap"
F32, I64 = TensorProto.FLOAT, TensorProto.INT64


@contextlib.contextmanager
def _placeholder_schema() -> Iterator[None]:
    """The placeholder's ONNX schema, registered only while exporting (the tracer needs one)."""
    param = onnx.defs.OpSchema.FormalParameter
    schema = onnx.defs.OpSchema(
        OP,
        DOMAIN,
        1,
        "CDPruner's greedy MAP; replaced by an ONNX Loop before the graph is saved",
        inputs=[param("kernel", "T"), param("steps_rows", "I")],
        outputs=[param("picks", "I")],
        type_constraints=[("T", ["tensor(float)"], ""), ("I", ["tensor(int64)"], "")],
    )
    onnx.defs.register_schema(schema)
    try:
        yield
    finally:
        onnx.defs.deregister_schema(OP, 1, DOMAIN)


def _translation_table() -> dict:
    from onnxscript import values

    import tpc.methods.cdpruner  # noqa: F401  (registers torch.ops.tpc.cdpruner_greedy_map)

    placeholder = values.Op(values.Opset(DOMAIN, 1), OP)

    def greedy(kernel, steps_rows):
        return placeholder(kernel, steps_rows)

    return {torch.ops.tpc.cdpruner_greedy_map.default: greedy}


def export_with_greedy_loops(
    module: torch.nn.Module,
    args: tuple,
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: Any,
    axis_names: dict[str, dict[int, str]],
) -> Path:
    """``export_onnx`` for a module that calls ``greedy_map_rows``: each call becomes an ONNX Loop."""
    from tpc.compiler.onnx_export import export_onnx

    with _placeholder_schema():  # registered before the table's op is made (it looks its schema up)
        export_onnx(
            module,
            args,
            path,
            input_names,
            output_names,
            dynamic_shapes,
            axis_names,
            custom_translation_table=_translation_table(),
        )
    model = onnx.load(str(path), load_external_data=False)
    if not splice_greedy_loops(model):
        raise ExportError(f"ONNX export of {path.name}: no greedy placeholder to turn into a Loop")
    onnx.save(model, str(path))
    return path


def _const(name: str, values: list, dtype: int = I64, scalar: bool = False) -> onnx.NodeProto:
    tensor = helper.make_tensor(name, dtype, [] if scalar else [len(values)], values)
    return helper.make_node("Constant", [], [name], name=name, value=tensor)


def _dims(model: onnx.ModelProto, name: str, rank: int, fallback: str) -> list[str | int | None]:
    """The dims the exporter recorded for ``name`` (names or sizes), else fresh names."""
    for value in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        dims = value.type.tensor_type.shape.dim
        if value.name == name and len(dims) == rank:
            return [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in dims]
    return [f"{fallback}_{axis}" for axis in range(rank)]


def greedy_body(p: str, dims: dict[str, Any]) -> onnx.GraphProto:
    """One greedy step on constant-shape state. Names start with ``p``; it reads ``{p}kernel`` and the
    ``{p}shape_*`` tensors of the outer graph. ``dims``: b, n, k for the declared state shapes."""
    b, n, k = dims["b"], dims["n"], dims["k"]

    def node(op, inputs, outputs, **attrs):
        return helper.make_node(op, [p + i for i in inputs], [p + o for o in outputs], name=p + outputs[0], **attrs)

    nodes = [
        node("ArgMax", ["gains_in"], ["pick"], axis=1, keepdims=1),  # [B,1]: first index on ties
        node("Unsqueeze", ["pick", "last"], ["pick3"]),
        node("Expand", ["pick3", "shape_b1n"], ["row_index"]),
        node("GatherElements", ["kernel", "row_index"], ["k_row"], axis=1),  # K_j [B,1,n]
        node("Expand", ["pick3", "shape_bk1"], ["coeff_index"]),
        node("GatherElements", ["rows_in", "coeff_index"], ["coeff"], axis=2),  # c_s[j] [B,k,1]
        node("Transpose", ["coeff"], ["coeff_t"], perm=[0, 2, 1]),
        node("MatMul", ["coeff_t", "rows_in"], ["projection"]),  # rows at and after this step are zero
        node("Sub", ["k_row", "projection"], ["numerator"]),
        node("GatherElements", ["gains_in", "pick"], ["gain"], axis=1),  # d_j^2 [B,1]
        node("Unsqueeze", ["gain", "last"], ["gain3"]),
        node("Greater", ["gain3", "zero_f"], ["positive"]),
        node("Where", ["positive", "gain3", "one_f"], ["safe_gain"]),
        node("Sqrt", ["safe_gain"], ["root"]),
        node("Div", ["numerator", "root"], ["scaled"]),
        node("Where", ["positive", "scaled", "zero_f"], ["row"]),  # e [B,1,n]; 0 once the rank is spent
        node("Squeeze", ["row", "one"], ["row2"]),
        node("Mul", ["row2", "row2"], ["row_sq"]),
        node("Sub", ["gains_in", "row_sq"], ["gains_left"]),
        node("ScatterElements", ["gains_left", "pick", "minus_inf"], ["gains_out"], axis=1),
        node("Reshape", ["step", "one"], ["step1"]),
        node("Expand", ["step1", "shape_b1n"], ["slot_rows"]),
        node("ScatterElements", ["rows_in", "slot_rows", "row"], ["rows_out"], axis=1),  # row `step` = e
        node("Expand", ["step1", "shape_b1"], ["slot_picks"]),
        node("ScatterElements", ["picks_in", "slot_picks", "pick"], ["picks_out"], axis=1),
        node("Identity", ["cond_in"], ["cond_out"]),
    ]
    value = helper.make_tensor_value_info
    return helper.make_graph(
        nodes,
        p + "step",
        [
            value(p + "step", I64, []),
            value(p + "cond_in", TensorProto.BOOL, []),
            value(p + "gains_in", F32, [b, n]),
            value(p + "rows_in", F32, [b, k, n]),
            value(p + "picks_in", I64, [b, k]),
        ],
        [
            value(p + "cond_out", TensorProto.BOOL, []),
            value(p + "gains_out", F32, [b, n]),
            value(p + "rows_out", F32, [b, k, n]),
            value(p + "picks_out", I64, [b, k]),
        ],
    )


def greedy_loop_nodes(kernel: str, steps_rows: str, picks: str, p: str, dims: dict[str, Any]) -> list[onnx.NodeProto]:
    """The nodes that compute ``picks`` [B,k] (in pick order) from ``kernel`` [B,n,n], k = len(steps_rows)."""

    def node(op, inputs, outputs, **attrs):
        return helper.make_node(op, inputs, [p + o for o in outputs], name=p + outputs[0], **attrs)

    q = [p + name for name in ("zero", "one", "two", "last", "kernel_shape", "dim_b", "dim_n", "dim_k")]
    zero, one, two, last, shape, dim_b, dim_n, dim_k = q
    return [
        _const(zero, [0]),
        _const(one, [1]),
        _const(two, [2]),
        _const(last, [-1]),
        _const(p + "zero_f", [0.0], F32),
        _const(p + "one_f", [1.0], F32),
        _const(p + "zero_s", [0], scalar=True),
        _const(p + "one_s", [1], scalar=True),
        node("Identity", [kernel], ["kernel"]),
        node("Shape", [kernel], ["kernel_shape"]),  # [B,n,n]
        node("Slice", [shape, zero, one], ["dim_b"]),
        node("Slice", [shape, one, two], ["dim_n"]),
        node("Shape", [steps_rows], ["dim_k"]),
        node("Squeeze", [dim_k, zero], ["trips"]),  # 0-d: the trip count, from a shape
        node("Concat", [dim_b, one, dim_n], ["shape_b1n"], axis=0),
        node("Concat", [dim_b, dim_k, one], ["shape_bk1"], axis=0),
        node("Concat", [dim_b, one], ["shape_b1"], axis=0),
        node("Concat", [dim_b, dim_k, dim_n], ["shape_bkn"], axis=0),
        node("Concat", [dim_b, dim_k], ["shape_bk"], axis=0),
        node("Concat", [dim_b, dim_n, one], ["shape_bn1"], axis=0),
        node("ConstantOfShape", [p + "shape_b1"], ["minus_inf"], value=helper.make_tensor("v", F32, [1], [-math.inf])),
        # the diagonal K_ii: GatherElements along the last axis with index i in row i
        node("Squeeze", [dim_n, zero], ["n_s"]),
        node("Range", [p + "zero_s", p + "n_s", p + "one_s"], ["arange"]),
        node("Unsqueeze", [p + "arange", last], ["arange_col"]),
        node("Expand", [p + "arange_col", p + "shape_bn1"], ["diagonal_index"]),
        node("GatherElements", [kernel, p + "diagonal_index"], ["diagonal"], axis=2),
        node("Squeeze", [p + "diagonal", last], ["gains0"]),
        node("ConstantOfShape", [p + "shape_bkn"], ["rows0"], value=helper.make_tensor("z", F32, [1], [0.0])),
        node("ConstantOfShape", [p + "shape_bk"], ["picks0"], value=helper.make_tensor("z", I64, [1], [0])),
        helper.make_node(
            "Loop",
            [p + "trips", "", p + "gains0", p + "rows0", p + "picks0"],
            [p + "gains", p + "rows", picks],
            name=p + "loop",
            body=greedy_body(p, dims),
        ),
    ]


def splice_greedy_loops(model: onnx.ModelProto) -> int:
    """Replace every ``GreedyMap`` placeholder of ``model`` by its Loop, in place; returns how many."""
    nodes, count = [], 0
    for node in model.graph.node:
        if not (node.domain == DOMAIN and node.op_type == OP):
            nodes.append(node)
            continue
        kernel, steps_rows = node.input
        b, n, _ = _dims(model, kernel, 3, f"greedy{count}_kernel")
        k = _dims(model, node.output[0], 2, f"greedy{count}_picks")[1]
        nodes += greedy_loop_nodes(kernel, steps_rows, node.output[0], f"greedy{count}/", {"b": b, "n": n, "k": k})
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return count


__all__ = ["export_with_greedy_loops", "greedy_body", "greedy_loop_nodes", "splice_greedy_loops"]
