"""Static TensorRT compatibility report for ONNX graphs (``tpc check --target trt``).

Checked against the TensorRT 10.x ONNX parser's documented constraints: operators and
opset it supports, TopK with a constant K (or one computed from input shapes, which
TensorRT 10 takes as a shape tensor) of at most 3840, no NonZero / Unique /
Compress, no data-dependent output shapes, every dynamic input axis covered by an
optimization profile of the build plan. int64 tensors are listed (TensorRT casts many of
them to int32). A blocker names its node.

Loops (TensorRT's ILoop): the trip count becomes a kCOUNT trip limit, taken from shapes or
constants (e.g. ``Squeeze(Shape(keep_rows))``; from tensor values it is a warning); scan
outputs need that counted length (no condition input); every loop-carried value keeps one
shape (a value rebuilt by Concat/Pad/Tile from its previous self grows each step: blocked);
the body's nodes are checked by the same rules as the graph's, outer shapes staying static.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from onnx import numpy_helper

MIN_OPSET, MAX_OPSET = 9, 20  # the opsets TensorRT 10.x's ONNX parser documents
TOPK_MAX_K = 3840
FORBIDDEN = {
    "NonZero": "data-dependent output shape (needs an output allocator)",
    "Unique": "unsupported by TensorRT",
    "Compress": "unsupported by TensorRT",
}
# Operators the TensorRT 10 ONNX parser imports (onnx-tensorrt operators list).
SUPPORTED_OPS = frozenset(
    """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Bernoulli
BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow Cast CastLike Ceil Celu Clip Concat
ConcatFromSequence Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DFT DepthToSpace
DequantizeLinear Div Dropout DynamicQuantizeLinear Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
GRU Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater
GreaterOrEqual GridSample GroupNormalization HammingWindow HannWindow HardSigmoid HardSwish Hardmax
Identity If ImageScaler InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul MatMulInteger Max MaxPool MaxRoiPool
MaxUnpool Mean MeanVarianceNormalization Min Mish Mod Mul Multinomial Neg NonMaxSuppression Not
OneHot Or PRelu Pad ParametricSoftplus Pow QLinearConv QLinearMatMul QuantizeLinear RNN RandomNormal
RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RoiAlign Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu SequenceAt
SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength Shape Shrink Sigmoid Sign
Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split SplitToSequence Sqrt Squeeze Sub Sum
Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split()
)
# Inputs (by position) whose *values* set an output shape; they must come from shapes/constants.
SHAPE_INPUTS = {
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "ConstantOfShape": (0,),
    "Range": (0, 1, 2),
    "Slice": (1, 2, 3, 4),
    "TopK": (1,),
    "Resize": (3,),
    "Pad": (1,),
    "OneHot": (1,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "Split": (1,),
}
# Ops through which "derived from shapes or constants" propagates.
SHAPE_ARITHMETIC = {
    "Shape",
    "Size",
    "Constant",
    "Gather",
    "Concat",
    "Unsqueeze",
    "Squeeze",
    "Cast",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Slice",
    "Reshape",
    "Min",
    "Max",
    "Equal",
    "Where",
    "Identity",
    "Mod",
    "Neg",
    "ConstantOfShape",
    "Range",
    "Expand",
    "ReduceProd",
    "Abs",
    "Less",
    "Greater",
    "Not",
    "And",
    "Or",
    "CumSum",
    "Floor",
    "Ceil",
    "Sqrt",
    "Clip",
    "LessOrEqual",
    "GreaterOrEqual",
    "Tile",
}


@dataclass
class GraphReport:
    graph: str
    blockers: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    int64: list[str] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)
    opset: int | None = None

    @property
    def ok(self) -> bool:
        return not self.blockers

    def as_dict(self) -> dict[str, Any]:
        return {
            "graph": self.graph,
            "ok": self.ok,
            "opset": self.opset,
            "blockers": self.blockers,
            "warnings": self.warnings,
            "int64_tensors": self.int64,
            "ops": self.ops,
        }


def _constant_values(graph: onnx.GraphProto) -> dict[str, Any]:
    values = {
        init.name: numpy_helper.to_array(init)
        for init in graph.initializer
        if init.data_location != onnx.TensorProto.EXTERNAL
    }
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
                elif attr.name in ("value_int", "value_ints"):
                    values[node.output[0]] = onnx.helper.get_attribute_value(attr)
    return values


def _static_names(graph: onnx.GraphProto, outer: set[str] | None = None) -> set[str]:
    """Tensors computed only from shapes and constants (not from input data); ``outer``: those of the
    enclosing graph, which a Loop body reads as loop-invariant values."""
    static = set(outer or ()) | {init.name for init in graph.initializer}
    for node in graph.node:  # nodes are topologically sorted in a valid ONNX graph
        if node.op_type in ("Shape", "Size", "Constant") or (
            node.op_type in SHAPE_ARITHMETIC and all(i in static or i == "" for i in node.input)
        ):
            static.update(node.output)
    return static


def check_graph(model: onnx.ModelProto, name: str, profiles: list[dict] | None = None) -> GraphReport:
    graph = model.graph
    report = GraphReport(name)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    report.opset = opsets.get("ai.onnx")
    if report.opset is not None and not MIN_OPSET <= report.opset <= MAX_OPSET:
        report.blockers.append(f"opset {report.opset} outside TensorRT's supported {MIN_OPSET}-{MAX_OPSET}")
    _check_nodes(graph.node, _constant_values(graph), _static_names(graph), report)
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            report.int64.append(value.name)
    report.int64 += [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT64][:20]
    if profiles is not None:
        _check_profiles(graph, profiles, report)
    return report


def _check_nodes(nodes, constants: dict[str, Any], static: set[str], report: GraphReport, scope: str = "") -> None:
    """The per-node rules; ``scope`` prefixes the labels of a Loop body's nodes."""
    for node in nodes:
        label = f"{scope}{node.op_type} node {node.name or node.output[0]!r}"
        report.ops[node.op_type] = report.ops.get(node.op_type, 0) + 1
        if node.domain not in ("", "ai.onnx"):
            report.blockers.append(f"{label}: custom domain {node.domain!r} has no TensorRT importer")
            continue
        if node.op_type in FORBIDDEN:
            report.blockers.append(f"{label}: {FORBIDDEN[node.op_type]}")
            continue
        if node.op_type not in SUPPORTED_OPS:
            report.blockers.append(f"{label}: operator not supported by the TensorRT ONNX parser")
        if node.op_type == "TopK":
            k = constants.get(node.input[1]) if len(node.input) > 1 else None
            if k is None and node.input[1] in static:  # TensorRT 10 takes it as a shape tensor (ITopKLayer input 1)
                report.warnings.append(
                    f"{label}: K comes from input shapes; the build plan's profiles must keep it <= {TOPK_MAX_K}"
                )
            elif k is None:
                report.blockers.append(f"{label}: K is computed from tensor values (needs a constant or a shape)")
            elif (largest := int(k.max()) if hasattr(k, "max") else int(k)) > TOPK_MAX_K:
                report.blockers.append(f"{label}: K = {largest} exceeds TensorRT's limit of {TOPK_MAX_K}")
            continue
        for position in SHAPE_INPUTS.get(node.op_type, ()):
            if position < len(node.input) and node.input[position] and node.input[position] not in static:
                report.blockers.append(
                    f"{label}: data-dependent output shape (input {position} "
                    f"{node.input[position]!r} comes from tensor values)"
                )
        if node.op_type == "Loop":
            _check_loop(node, label, constants, static, report)


# A loop-carried value rebuilt by one of these from its previous self changes shape every step.
GROWING = {"Concat", "Pad", "Tile"}
_PASS_THROUGH = {"Identity", "Cast"}


def _check_loop(node, label: str, constants: dict[str, Any], static: set[str], report: GraphReport) -> None:
    body = next((a.g for a in node.attribute if a.name == "body"), None)
    if body is None:
        return
    trip = node.input[0] if node.input else ""
    condition = node.input[1] if len(node.input) > 1 else ""
    counted = bool(trip) and trip in static  # a kCOUNT trip limit TensorRT can size
    if trip and not counted:
        report.warnings.append(f"{label}: the trip count comes from tensor values (a data-dependent step count)")
    states = len(node.input) - 2
    scans = len(body.output) - 1 - states
    if scans > 0 and not (counted and not condition):
        report.blockers.append(
            f"{label}: {scans} scan output(s) with a dynamic length (needs a trip count from shapes or "
            "constants and no condition input)"
        )
    _check_states(body, states, label, report)
    inner = {**constants, **_constant_values(body)}
    _check_nodes(body.node, inner, _static_names(body, static), report, scope=f"{label} body: ")


def _check_states(body: onnx.GraphProto, states: int, label: str, report: GraphReport) -> None:
    """Each loop-carried value must keep its shape from one step to the next (TensorRT's IRecurrenceLayer)."""
    producers = {out: n for n in body.node for out in n.output}

    def source(name: str) -> str:
        while name in producers and producers[name].op_type in _PASS_THROUGH:
            name = producers[name].input[0]
        return name

    for given, returned in zip(body.input[2 : 2 + states], body.output[1 : 1 + states], strict=True):
        maker = producers.get(source(returned.name))
        if maker is not None and maker.op_type in GROWING and any(source(i) == given.name for i in maker.input):
            report.blockers.append(
                f"{label}: loop-carried {given.name!r} is rebuilt by {maker.op_type} from itself, so it changes "
                "shape every step; TensorRT's loop recurrences keep one shape (preallocate it, write with "
                "ScatterElements)"
            )
            continue
        before, after = _declared(given), _declared(returned)
        if before is not None and after is not None and _differ(before, after):
            report.blockers.append(
                f"{label}: loop-carried {given.name!r} is declared {before} but the step returns {after}; "
                "TensorRT's loop recurrences keep one shape"
            )


def _declared(value: onnx.ValueInfoProto) -> list | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


def _differ(before: list, after: list) -> bool:
    fixed = zip(before, after, strict=True) if len(before) == len(after) else None
    return fixed is None or any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in fixed)


def _check_profiles(graph: onnx.GraphProto, profiles: list[dict], report: GraphReport) -> None:
    initializers = {i.name for i in graph.initializer}
    for value in graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        dynamic = [axis for axis, d in enumerate(dims) if d.dim_param or not d.HasField("dim_value")]
        for profile in profiles:
            shape = profile["shapes"].get(value.name)
            if shape is None:
                report.blockers.append(f"input {value.name!r} has no shape in profile {profile['name']!r}")
                continue
            for axis, d in enumerate(dims):
                lo, hi = shape["min"][axis], shape["max"][axis]
                if axis in dynamic:
                    if not lo <= shape["opt"][axis] <= hi:
                        report.blockers.append(
                            f"input {value.name!r} axis {axis}: profile {profile['name']!r} "
                            f"has min/opt/max out of order"
                        )
                elif not lo == hi == d.dim_value:
                    report.blockers.append(
                        f"input {value.name!r} axis {axis} is fixed at {d.dim_value} but profile "
                        f"{profile['name']!r} asks for {lo}..{hi}"
                    )
            if len(shape["min"]) != len(dims):
                report.blockers.append(
                    f"input {value.name!r}: profile {profile['name']!r} has rank "
                    f"{len(shape['min'])}, the graph {len(dims)}"
                )


def check_artifact(root: Path, manifest: dict) -> list[GraphReport]:
    plan = manifest.get("trt_plan")
    reports = []
    for name, info in manifest["graphs"].items():
        model = onnx.load(str(root / info["file"]), load_external_data=False)
        profiles = plan["engines"][name]["profiles"] if plan else None
        report = check_graph(model, name, profiles)
        if plan is None:
            report.warnings.append("no TensorRT build plan in this artifact (compile with --target trt)")
        reports.append(report)
    return reports
