"""The static TensorRT checker: planted violations are flagged, compiled graphs pass."""

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run_cli
from tpc.compiler.trt_check import check_graph


def _model(nodes, inputs, outputs, initializers=(), opset=18):
    graph = helper.make_graph(nodes, "planted", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


X = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 576])
VALUES = helper.make_tensor_value_info("values", TensorProto.FLOAT, None)
INDICES = helper.make_tensor_value_info("indices", TensorProto.INT64, None)


def test_topk_with_a_computed_k_is_a_blocker():
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Cast", ["m"], ["k0"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["k0", "one"], ["k"]),
        helper.make_node("TopK", ["x", "k"], ["values", "indices"], name="select"),
    ]
    report = check_graph(_model(nodes, [X], [VALUES, INDICES], [numpy_helper.from_array(np.array([1]), "one")]), "g")
    assert not report.ok
    assert any("'select'" in b and "computed from tensor values" in b for b in report.blockers)


def test_topk_with_k_from_an_input_shape_is_a_warning_bounded_by_the_plan():
    rows = helper.make_tensor_value_info("keep_rows", TensorProto.INT64, ["keep_rows"])
    nodes = [
        helper.make_node("Shape", ["keep_rows"], ["k"]),
        helper.make_node("TopK", ["x", "k"], ["values", "indices"], name="dynamic"),
    ]
    report = check_graph(_model(nodes, [X, rows], [VALUES, INDICES]), "g")
    assert report.ok and any("'dynamic'" in w and "<= 3840" in w for w in report.warnings)


def test_plan_bounds_a_run_time_k_and_refuses_one_over_the_topk_limit():
    from tpc.compiler.trt_plan import staged_engines
    from tpc.errors import UsageError
    from tpc.methods.in_llm import FASTV

    runtime = {"hidden_size": 8, "num_kv_heads": 2, "head_dim": 4, "num_layers": 4}
    for longest, ratio in ((2928, 0.5), (8000, 0.25)):
        plan = FASTV.plan({"layer": "1"}, 4, longest, ratio)
        runtime["llm_pruning"] = plan.as_dict()
        runtime["llm_pruning_rule"] = {"method": "fastv", "args": {"layer": "1"}, "ratio": ratio}
        runtime["llm_pruning_rule"]["max_image_tokens"] = longest
        if plan.stages[0].keep > 3840:
            with pytest.raises(UsageError, match="TopK takes at most 3840"):
                staged_engines(runtime, 2, longest + 64, 512, 512, longest + 128)
            continue
        shapes = staged_engines(runtime, 2, longest + 64, 512, 512, longest + 128)["select_1"][0]["shapes"]
        assert shapes["keep_rows"]["max"] == [plan.stages[0].keep] and shapes["image_rows"]["max"] == [longest]
        assert shapes["score"]["min"] == [1, 2] and shapes["score"]["max"] == [2, longest + 64]


def test_nonzero_is_a_blocker():
    nodes = [helper.make_node("NonZero", ["x"], ["indices"], name="nz")]
    report = check_graph(_model(nodes, [X], [INDICES]), "g")
    assert report.blockers == ["NonZero node 'nz': data-dependent output shape (needs an output allocator)"]


def test_topk_k_above_3840_is_a_blocker():
    k = numpy_helper.from_array(np.array([5000], dtype=np.int64), "k")
    nodes = [helper.make_node("TopK", ["x", "k"], ["values", "indices"], name="big")]
    report = check_graph(_model(nodes, [X], [VALUES, INDICES], [k]), "g")
    assert report.blockers == ["TopK node 'big': K = 5000 exceeds TensorRT's limit of 3840"]


def test_constant_k_topk_passes_and_int64_is_listed():
    k = numpy_helper.from_array(np.array([64], dtype=np.int64), "k")
    nodes = [helper.make_node("TopK", ["x", "k"], ["values", "indices"], name="ok")]
    report = check_graph(_model(nodes, [X], [VALUES, INDICES], [k]), "g")
    assert report.ok and "indices" in report.int64


def test_data_dependent_reshape_custom_domain_and_opset():
    nodes = [
        helper.make_node("Cast", ["x"], ["s"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["x", "s"], ["values"], name="reshape_by_value"),
        helper.make_node("FusedMatMul", ["x", "x"], ["y"], domain="com.microsoft", name="fused"),
    ]
    model = _model(nodes, [X], [VALUES], opset=21)
    report = check_graph(model, "g")
    assert any("'reshape_by_value': data-dependent output shape" in b for b in report.blockers)
    assert any("'fused': custom domain 'com.microsoft'" in b for b in report.blockers)
    assert any("opset 21" in b for b in report.blockers)


def test_shape_derived_reshape_passes():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["values"], name="fine")]
    assert check_graph(_model(nodes, [X], [VALUES]), "g").ok


@pytest.mark.parametrize("target", ["onnx", "trt"])
def test_every_compiled_graph_passes(artifacts, target, capsys):
    root = artifacts(0.89, target)
    code, out, err = run_cli(["check", str(root), "--json"], capsys)
    assert code == 0, out
    reports = json.loads(out)
    assert [r["graph"] for r in reports] == ["vision", "embed", "decoder"]
    assert all(r["ok"] for r in reports)
    assert reports[0]["ops"]["TopK"] == 2


def test_ort_target_artifacts_are_refused_with_the_targets_check_accepts(artifacts, capsys):
    code, out, err = run_cli(["check", str(artifacts(0.89, "ort"))], capsys)
    assert code == 2 and out == ""
    assert "optimised for ONNX Runtime" in err and "--target trt or onnx" in err


def test_trt_artifact_contents(artifacts):
    root = artifacts(0.89, "trt")
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["target"] == "trt" and manifest["trt_plan"]["precision"] == "fp16"
    assert all(r["ok"] for r in manifest["trt_check"])
    script = (root / "build_engines.sh").read_text()
    assert "--profile=1" in script and (root / "build_engines.sh").stat().st_mode & 0o111
    assert manifest["verification"]["passed"]
    assert not manifest.get("engines")  # no TensorRT here


def test_trt_artifact_without_engines(artifacts, capsys, tmp_path):
    root = artifacts(0.89, "trt")
    code, _, err = run_cli(["run", str(root), "--prompt", "hi", "--max-new-tokens", "2"], capsys)
    assert code == 4 and "engines are not built" in err and "--runtime ort" in err
    code, out, err = run_cli(
        ["run", str(root), "--prompt", "hi", "--max-new-tokens", "2", "--runtime", "ort", "--json"], capsys
    )
    assert code == 0, err
    code, _, err = run_cli(["build", str(root)], capsys)
    assert code == 4 and "TensorRT is not installed" in err


def test_fastv_artifact_graphs_pass_and_plan_per_segment(llm_artifacts, capsys):
    root = llm_artifacts("fastv")
    code, out, _ = run_cli(["check", str(root), "--json"], capsys)
    assert code == 0, out
    reports = json.loads(out)
    assert [r["graph"] for r in reports] == ["vision", "embed", "decoder_0", "select_1", "decoder_1"]
    assert all(r["ok"] for r in reports)
    assert reports[3]["ops"]["TopK"] == 2  # constant-K TopK over the image block, then the ascending sort
    manifest = json.loads((root / "manifest.json").read_text())
    engines = manifest["trt_plan"]["engines"]
    assert [p["name"] for p in engines["decoder_1"]["profiles"]] == ["prefill", "decode"]
    script = (root / "build_engines.sh").read_text()
    assert (
        "--onnx=decoder_0.onnx" in script and "--onnx=select_1.onnx" in script and "--onnx=decoder.onnx" not in script
    )
