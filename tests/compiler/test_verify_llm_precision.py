"""In-LLM pruning in half precision: fp32 selection scores, per-stage kept indices checked against fp32."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest

from tests.conftest import run_cli
from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.compiler.precision import PrecisionSettings
from tpc.compiler.verify_llm_precision import compare_llm, llm_failures, llm_references
from tpc.methods.in_llm import PruningPlan
from tpc.runtimes.compiled_model import CompiledModel

FP16 = PrecisionSettings(dtype="fp16")
CONFIGS = {
    "fastv": dict(method="fastv", method_args={"layer": "2"}, ratio=0.75),
    "pdrop": dict(method="pdrop", method_args={"layers": "1,2,3", "keep": "0.5,0.25,0.125"}),
}


@pytest.fixture(scope="module")
def half_llm(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp16-llm")
    built = {}

    def get(name: str):
        if name not in built:
            settings = CompileSettings(
                model="llava-tiny", output=root / name, target="onnx", precision=FP16, **CONFIGS[name]
            )
            built[name] = compile_model(settings)
        return built[name]

    return get


@pytest.mark.parametrize("name", list(CONFIGS))
def test_half_staged_decoder_compiles_and_records_each_stage(half_llm, name, demo_image):
    out = half_llm(name)
    m = json.loads((out / "manifest.json").read_text())
    assert m["precision"]["dtype"] == "fp16" and m["runtime"]["dtype"] == "float16"
    v = m["verification"]
    assert v["mode"] == "agreement with fp32" and v["passed"]
    decoder = v["decoder"]
    assert decoder["run"] == "staged" and decoder["logit_cosine_min"] >= 0.999
    stages = len(m["llm_pruning"]["stages"])
    assert {r["batch"] for r in decoder["stages"]} == {1, 2}
    assert all(len(r["kept"]) == stages for r in decoder["stages"])
    assert all(k in ("exact", "near-tie") for r in decoder["stages"] for k in r["kept"])
    segment = onnx.load(str(out / "decoder_0.onnx"))
    types = {o.name: o.type.tensor_type.elem_type for o in segment.graph.output}
    assert types["hidden"] == onnx.TensorProto.FLOAT16 and types["score"] == onnx.TensorProto.FLOAT  # fp32 scores
    result = CompiledModel.load(out).generate(["What is it?"], [demo_image], max_new_tokens=2)
    assert len(result.token_ids[0]) >= 1 and result.llm_kept_indices is not None


def test_a_planted_stage_disagreement_fails_with_its_numbers(half_llm, tiny_adapter):
    out = half_llm("fastv")
    m = json.loads((out / "manifest.json").read_text())
    plan = PruningPlan.from_dict(m["runtime"]["llm_pruning"])
    graphs = CompiledModel.load(out).graphs
    references = llm_references(tiny_adapter, {None: plan}, None)
    thresholds = FP16.thresholds("fp16")
    runtime = dict(m["runtime"], llm_pruning_rule=None)
    assert compare_llm(graphs, references, runtime, thresholds)["passed"]
    planted = copy.deepcopy(references)
    ref = next(r for r in planted if r["batch"] == 2)
    keep = ref["kept"][0].shape[1]
    ref["kept"][0] = np.argsort(ref["scores"][0], axis=-1)[:, :keep]  # the least-scored rows: no near-tie
    report = compare_llm(graphs, planted, runtime, thresholds)
    assert not report["passed"]
    assert llm_failures(report, thresholds)[0] == "fastv b2: stage indices mismatch"


def test_load_dtype_of_in_llm_pruning_follows_the_target():
    from tpc.compiler.precision import load_dtype

    assert load_dtype(PrecisionSettings(), "trt", None, None, None, "fastv") == "fp16"
    assert load_dtype(PrecisionSettings(), "trt", None, None, None, "dart-llm") == "fp32"  # fp32 only


def test_trt_default_compiles_in_llm_pruning_in_fp16(tmp_path, capsys):
    argv = ["compile", "llava-tiny", "--method", "fastv", "--method-arg", "layer=2", "--ratio", "0.75"]
    code, _, err = run_cli([*argv, "--target", "trt", "--no-build", "-o", str(tmp_path / "t")], capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert m["precision"]["dtype"] == "fp16" and m["verification"]["passed"]
    assert all(r["ok"] for r in m["trt_check"])


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--quantize", "int8"], "--quantize with in-LLM pruning (fastv) is refused: the kept set would depend"),
        (["--store-weights", "fp16"], "--store-weights fp16 with in-LLM pruning (fastv) is not checked yet"),
        (["--dtype", "fp16", "--target", "onnx", "--method", "dart-llm"], "in-LLM dart-llm compiles in fp32 only"),
    ],
)
def test_in_llm_refusals_are_one_line(argv, message, tmp_path, capsys):
    method = [] if "--method" in argv else ["--method", "fastv"]
    base = ["compile", "llava-tiny", *method, "--ratio", "0.75", *argv]
    code, _, err = run_cli([*base, "-o", str(tmp_path / "x")], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
