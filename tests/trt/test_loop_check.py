"""The greedy Loop (``tpc.compiler.greedy_loop``) built on its own, run in ONNX Runtime, and the static
TensorRT check's Loop rules: a trip count from a shape passes; what TensorRT cannot build is blocked."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from tpc.compiler.greedy_loop import greedy_loop_nodes
from tpc.compiler.trt_check import check_graph
from tpc.methods.cdpruner import greedy_map

P = "greedy0/"


def _model(mutate=None) -> onnx.ModelProto:
    """kernel [b,n,n], keep_rows [k] -> picks [b,k] in pick order; ``mutate(nodes, body)`` edits it first."""
    nodes = greedy_loop_nodes("kernel", "keep_rows", "picks", P, {"b": "b", "n": "n", "k": "k"})
    if mutate is not None:
        mutate(nodes, nodes[-1].attribute[0].g)
    graph = helper.make_graph(
        nodes,
        "greedy",
        [
            helper.make_tensor_value_info("kernel", TensorProto.FLOAT, ["b", "n", "n"]),
            helper.make_tensor_value_info("keep_rows", TensorProto.INT64, ["k"]),
        ],
        [helper.make_tensor_value_info("picks", TensorProto.INT64, ["b", "k"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _kernels(seed: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, n, 24, generator=g)
    kernel = features @ features.transpose(1, 2) / 24
    kernel[1] = torch.eye(n) * torch.tensor([1.0, 2.0, 2.0, 1.0, 2.0, 0.5, 2.0][:n] + [1.0] * (n - 7))  # exact ties
    return kernel


def test_the_loop_runs_one_greedy_step_per_row_of_keep_rows():
    model = _model()
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (7, 16):
        kernel = _kernels(n, n)
        for keep in (0, 1, 5, n):  # 0: no step (the first half of a one-token quota), n: every token
            (picks,) = session.run(None, {"kernel": kernel.numpy(), "keep_rows": np.arange(keep)})
            assert picks.tolist() == greedy_map(kernel, keep).tolist(), (n, keep)
    assert picks[1].tolist()[:4] == [1, 2, 4, 6]  # ties: the first index


def test_a_trip_count_from_a_shape_passes_the_check():
    report = check_graph(_model(), "greedy")
    assert report.blockers == [] and report.warnings == []
    assert report.ops["Loop"] == 1 and report.ops["ArgMax"] == 1  # the body's nodes are checked too


def _node(body, output: str) -> onnx.NodeProto:
    return next(node for node in body.node if P + output in node.output)


def _trip_from_values(nodes, body):
    loop = nodes[-1]
    nodes.insert(-1, helper.make_node("ReduceMax", ["keep_rows"], ["steps_value"], keepdims=0))
    loop.input[0] = "steps_value"


def _growing_rows(nodes, body):
    scatter = _node(body, "rows_out")
    scatter.CopyFrom(helper.make_node("Concat", [P + "rows_in", P + "row"], [P + "rows_out"], axis=1, name="grow"))


def _nonzero_in_body(nodes, body):
    body.node.insert(0, helper.make_node("NonZero", [P + "gains_in"], [P + "where_nonzero"], name="nz"))


def _shape_from_values(nodes, body):
    expand = _node(body, "row_index")
    expand.input[1] = P + "pick"  # a shape made of picked indices: data-dependent


def _rank_change(nodes, body):
    body.output[2].CopyFrom(helper.make_tensor_value_info(P + "rows_out", TensorProto.FLOAT, ["b", "n"]))


def _scan_output(counted: bool):
    def mutate(nodes, body):
        body.output.append(helper.make_tensor_value_info(P + "pick", TensorProto.INT64, ["b", 1]))
        nodes[-1].output.append("scanned")
        if not counted:
            nodes[-1].input[1] = P + "cond"
            nodes.insert(-1, helper.make_node("Constant", [], [P + "cond"], value_int=1))

    return mutate


@pytest.mark.parametrize(
    "mutate,blocker",
    [
        (_growing_rows, "'greedy0/rows_in' is rebuilt by Concat from itself"),
        (_nonzero_in_body, "body: NonZero node 'nz': data-dependent output shape"),
        (_shape_from_values, "body: Expand node 'greedy0/row_index': data-dependent output shape"),
        (_rank_change, "'greedy0/rows_in' is declared ['b', 'k', 'n'] but the step returns ['b', 'n']"),
        (_scan_output(counted=False), "1 scan output(s) with a dynamic length"),
    ],
    ids=["growing-state", "nonzero", "data-shape", "rank-change", "scan-with-condition"],
)
def test_what_tensorrt_cannot_build_in_a_loop_is_blocked(mutate, blocker):
    report = check_graph(_model(mutate), "greedy")
    assert any(blocker in b and "Loop node 'greedy0/loop'" in b for b in report.blockers), report.blockers


def test_a_data_dependent_trip_count_warns_and_a_counted_scan_output_passes():
    report = check_graph(_model(_trip_from_values), "greedy")
    assert report.blockers == [] and any("trip count comes from tensor values" in w for w in report.warnings)
    assert check_graph(_model(_scan_output(counted=True)), "greedy").blockers == []
