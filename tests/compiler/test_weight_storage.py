"""``--store-weights fp16`` (tpc.compiler.weight_storage): fp16 initializers + Cast in the graphs not quantized,
checked against the fp32 reference on the stored graphs; refusals; grid graphs keep one shared weights file."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run_cli
from tpc.artifact_layout import SHARED_VISION_WEIGHTS
from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.compiler.precision import PrecisionSettings
from tpc.compiler.verify_precision import compare_reduced, reduced_references
from tpc.compiler.weight_storage import MIN_BYTES, store_graph_fp16
from tpc.manifest import load_artifact
from tpc.methods import get_method
from tpc.models.families import make_adapter
from tpc.models.presets import PRESETS, build_preset
from tpc.runtimes.compiled_model import CompiledModel
from tpc.runtimes.ort import OrtGraphs

# int4 on a 64-wide random decoder loses far more than on a real one: thresholds set by the user (as in
# test_precision); ratio 0.25 keeps llava-tiny's kept sets clear of fp16 near-ties (at 0.5 one flips: see
# test_a_flipped_near_tie_fails_compile_and_names_it)
INT4 = dict(quantize=4, min_logit_cosine=0.5, min_token_agreement=0.2)


def _graph(path) -> None:
    """x[1, 64] @ W[64, 64] + b + 0 * (x @ H): W large (stored fp16), b small (stays), H large but beyond fp16."""
    rng = np.random.default_rng(0)
    tensors = {
        "W": rng.standard_normal((64, 64)),
        "b": rng.standard_normal(64),
        "H": 1e6 * rng.random((64, 64)),
        "zero": np.zeros(1),
    }
    initializers = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in tensors.items()]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y0"]),
        helper.make_node("MatMul", ["x", "H"], ["xh"]),
        helper.make_node("Mul", ["xh", "zero"], ["z"]),
        helper.make_node("Add", ["y0", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0)


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_large_fp32_initializers_become_fp16_and_a_cast(tmp_path):
    path = tmp_path / "g.onnx"
    _graph(path)
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    want = _run(path, x)
    stats = store_graph_fp16(path)
    model = onnx.load(str(path))
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert types == {"W__fp16": TensorProto.FLOAT16, "b": TensorProto.FLOAT, "H": TensorProto.FLOAT, "zero": 1}
    assert [n.op_type for n in model.graph.node][:2] == ["Cast", "MatMul"]  # the Cast just before its reader
    assert stats["initializers"] == 1 and stats["fp32_bytes"] == 64 * 64 * 4 and stats["stored_bytes"] == 64 * 64 * 2
    assert stats["kept_fp32_out_of_range"] == ["H"]  # 1e6 is beyond fp16
    assert stats["file_bytes_after"] < stats["file_bytes_before"] - 64 * 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx", "g.onnx.data"]
    got = _run(path, x)
    assert np.allclose(got, want, rtol=1e-3, atol=1e-2)  # fp32 arithmetic on fp16-rounded weights
    assert MIN_BYTES == 1024


@pytest.fixture(scope="module")
def stored_int4(tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "int4-fp16"
    precision = PrecisionSettings(store_weights="fp16", **INT4)
    return compile_model(CompileSettings(model="llava-tiny", output=out, ratio=0.25, target="ort", precision=precision))


def test_int4_with_fp16_storage_stores_the_graphs_not_quantized_in_fp16(stored_int4):
    manifest = json.loads((stored_int4 / "manifest.json").read_text())
    precision = manifest["precision"]
    assert precision["store_weights"] == "fp16" and precision["quantize"]["bits"] == 4
    stored = precision["stored_fp16"]
    assert set(stored["graphs"]) == {"vision", "embed"} and stored["kept_fp32"] == {
        "decoder": "quantized (MatMulNBits)"
    }
    for name in ("vision", "embed"):
        graph = onnx.load(str(stored_int4 / manifest["graphs"][name]["file"]), load_external_data=False)
        big = [t for t in graph.graph.initializer if np.prod(t.dims) * 4 >= MIN_BYTES]
        halves = [t for t in big if t.data_type == TensorProto.FLOAT16]
        assert halves and len(halves) == stored["graphs"][name]["initializers"]
        assert all(t.data_type != TensorProto.FLOAT for t in big)
        casts = {n.input[0] for n in graph.graph.node if n.op_type == "Cast"}
        assert {t.name for t in halves} <= casts
        record = stored["graphs"][name]
        assert record["file_bytes_after"] < 0.6 * record["file_bytes_before"]
        data = stored_int4 / (manifest["graphs"][name]["file"] + ".data")
        assert data.stat().st_size < 0.55 * record["fp32_bytes"] + 4096
    decoder = onnx.load(str(stored_int4 / manifest["graphs"]["decoder"]["file"]), load_external_data=False)
    assert any(n.op_type == "MatMulNBits" for n in decoder.graph.node)
    assert not any(t.data_type == TensorProto.FLOAT16 for t in decoder.graph.initializer)
    v = manifest["verification"]
    assert v["mode"] == "agreement with fp32" and v["passed"] and v["thresholds"]["exact_indices"]
    assert [r["indices"] for r in v["vision"]] == ["exact", "exact"]


def test_the_stored_graphs_reproduce_the_check_compile_recorded(stored_int4):
    """Compile's check ran on the graphs as stored: the artifact loaded from disk gives the same kept indices
    and the same greedy tokens against the same fp32 reference."""
    artifact = load_artifact(stored_int4)
    manifest = artifact.manifest
    model, processor = build_preset(PRESETS["llava-tiny"])
    adapter = make_adapter(model, processor)
    method = get_method(manifest["method"]["vision_method"])
    references = reduced_references(adapter, method, manifest["keep"], manifest["method"]["parameters"])
    graphs = OrtGraphs.from_artifact(artifact)
    report = compare_reduced(graphs, references, manifest["precision"]["thresholds"])
    recorded = manifest["verification"]
    assert [r["indices"] for r in report["vision"]] == [r["indices"] for r in recorded["vision"]] == ["exact"] * 2
    for ref in references["vision"]:
        _, kept = graphs.vision(ref["pixels"])
        assert np.array_equal(np.asarray(kept, dtype=np.int64), ref["indices"])
    assert report["decoder"]["token_agreement"] == recorded["decoder"]["token_agreement"]
    assert report["decoder"]["logit_cosine_min"] == pytest.approx(recorded["decoder"]["logit_cosine_min"], abs=1e-6)


def test_onnx_target_stores_every_graph_and_runs(tmp_path, demo_image):
    """No --quantize: the decoder is stored fp16 too; fp32 graphs checked with fp16's thresholds, exact indices."""
    out = tmp_path / "onnx"
    precision = PrecisionSettings(store_weights="fp16")
    compile_model(CompileSettings(model="llava-tiny", output=out, ratio=0.25, target="onnx", precision=precision))
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["precision"]["stored_fp16"]["graphs"]) == {"vision", "embed", "decoder"}
    assert manifest["runtime"]["dtype"] == "float32"
    v = manifest["verification"]
    assert v["passed"] and [r["indices"] for r in v["vision"]] == ["exact", "exact"]
    assert v["thresholds"]["min_logit_cosine"] == 0.999 and v["decoder"]["logit_cosine_min"] >= 0.999
    result = CompiledModel.load(out).generate(["What is it?"], [demo_image], max_new_tokens=3)
    assert len(result.token_ids[0]) >= 1


def test_a_flipped_near_tie_fails_compile_and_names_it(tmp_path, capsys):
    argv = ["compile", "llava-tiny", "--ratio", "0.5", "--quantize", "int4", "--store-weights", "fp16"]
    argv += ["--min-logit-cosine", "0", "--min-token-agreement", "0", "-o", str(tmp_path / "x")]
    code, _, err = run_cli(argv, capsys)
    assert code != 0 and "indices near-tie" in err and "a near-tie flipped" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--target", "trt", "--no-build"], "use --target ort or onnx"),
        (["--dtype", "fp16", "--target", "onnx"], "--dtype fp16 graphs already store half-precision weights"),
        (["--method", "cls-mass", "--buckets", "32,64"], "(an adaptive budget) compile in fp32 only"),
    ],
)
def test_store_weights_refusals_are_one_line_usage_errors(argv, message, tmp_path, capsys):
    out = tmp_path / "x"
    code, _, err = run_cli(
        ["compile", "llava-tiny", "--ratio", "0.5", "--store-weights", "fp16", *argv, "-o", str(out)], capsys
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_grid_graphs_keep_one_shared_weights_file(tmp_path):
    """qwen2.5-vl-tiny at two grids: the grid vision graphs stay fp32 and keep sharing one file (fp16 + Cast would
    give each ONNX Runtime session its own fp32 copy); the embedding and decoder graphs are stored fp16."""
    out = tmp_path / "qwen"
    settings = CompileSettings(
        model="qwen2.5-vl-tiny",
        output=out,
        ratio=0.75,
        target="ort",
        image_sizes=[(168, 280), (280, 168)],
        precision=PrecisionSettings(store_weights="fp16"),
    )
    compile_model(settings)
    manifest = json.loads((out / "manifest.json").read_text())
    grids = sorted(manifest["grid_vision"]["grids"])
    assert len(grids) == 2
    stored = manifest["precision"]["stored_fp16"]
    assert sorted(stored["kept_fp32"]) == grids and set(stored["graphs"]) >= {"embed", "decoder"}
    weights = manifest["grid_vision"]["weights"]
    assert weights["file"] == SHARED_VISION_WEIGHTS and weights["bytes_referenced"] > 1.5 * weights["bytes"]
    for name in grids:
        graph = onnx.load(str(out / manifest["graphs"][name]["file"]), load_external_data=False)
        locations = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations == {SHARED_VISION_WEIGHTS}
    assert not list(out.glob("vision_*.data"))
    v = manifest["verification"]
    assert v["passed"] and all(r["indices"] == "exact" for r in v["vision"])
    graphs = OrtGraphs.from_artifact(load_artifact(out))
    assert graphs.shared is not None  # the sessions map the one file
