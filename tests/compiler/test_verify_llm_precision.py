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
from tpc.compiler.verify_llm_precision import (
    ForcedSelection,
    compare_llm,
    llm_failures,
    llm_references,
    run_staged,
)
from tpc.methods.in_llm import PruningPlan
from tpc.runtimes.compiled_model import CompiledModel
from tpc.runtimes.decoders import StagedDecoder
from tpc.runtimes.ort import session_options

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
    stages = len(m["llm_pruning"]["stages"])
    assert decoder["run"].startswith(f"staged, {stages + 1} segments in ") and decoder["logit_cosine_min"] >= 0.999
    assert {r["batch"] for r in decoder["stages"]} == {1, 2}
    assert all(len(r["kept"]) == stages for r in decoder["stages"])
    assert all(k in ("exact", "near-tie") for r in decoder["stages"] for k in r["kept"])
    segment = onnx.load(str(out / "decoder_0.onnx"))
    types = {o.name: o.type.tensor_type.elem_type for o in segment.graph.output}
    assert types["hidden"] == onnx.TensorProto.FLOAT16 and types["score"] == onnx.TensorProto.FLOAT  # fp32 scores
    result = CompiledModel.load(out).generate(["What is it?"], [demo_image], max_new_tokens=2)
    assert len(result.token_ids[0]) >= 1 and result.llm_kept_indices is not None


def _check_inputs(out, adapter):
    m = json.loads((out / "manifest.json").read_text())
    plan = PruningPlan.from_dict(m["runtime"]["llm_pruning"])
    loaded = CompiledModel.load(out)
    segments = [out / f"decoder_{i}.onnx" for i in range(len(plan.segments()))]
    references = llm_references(adapter, {None: plan}, None)
    return loaded.graphs, references, dict(m["runtime"], llm_pruning_rule=None), (segments, session_options({}))


def test_a_planted_stage_disagreement_fails_with_its_numbers(half_llm, tiny_adapter):
    graphs, references, runtime, segments = _check_inputs(half_llm("fastv"), tiny_adapter)
    thresholds = FP16.thresholds("fp16")
    assert compare_llm(graphs, references, runtime, thresholds, *segments)["passed"]
    planted = copy.deepcopy(references)
    ref = next(r for r in planted if r["batch"] == 2)
    keep = ref["kept"][0].shape[1]
    ref["kept"][0] = np.argsort(ref["scores"][0], axis=-1)[:, :keep]  # the least-scored rows: no near-tie
    report = compare_llm(graphs, planted, runtime, thresholds, *segments)
    assert not report["passed"]
    assert llm_failures(report, thresholds)[0] == "fastv b2: stage indices mismatch"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_segment_by_segment_in_pieces_equals_the_staged_decoder(half_llm, tiny_adapter, name):
    """The check runs each segment a few layers at a time over every prompt and step before the next
    segment (what fits a 7 B decoder); the runtime's StagedDecoder runs step by step, whole: same logits
    and the same selections."""
    graphs, references, runtime, (segments, options) = _check_inputs(half_llm(name), tiny_adapter)
    runs, pieces = run_staged(graphs, references, runtime, segments, options)
    assert pieces > len(segments) if name == "fastv" else pieces == len(segments)  # fastv: cut inside segments
    for ref, run in zip(references, runs, strict=True):
        forced = ForcedSelection(graphs, ref["plan"], ref["kept"], ref["inputs"][3])
        decoder = StagedDecoder(forced, runtime, ref["plan"])
        embeds, mask, positions, image_start = ref["inputs"]
        whole = [decoder.prefill(embeds, mask, positions, image_start)] + [decoder.step(e) for e in ref["steps"]]
        assert len(whole) == len(run.logits) == len(ref["logits"])
        for got, want in zip(run.logits, whole, strict=True):
            np.testing.assert_allclose(got, np.float32(want), rtol=0, atol=8e-3)  # 2 fp16 ulps at |logit| < 4
        for got, want in zip(run.forced.own, forced.own, strict=True):
            np.testing.assert_array_equal(got, want)
    report = compare_llm(graphs, references, runtime, FP16.thresholds("fp16"), segments, options)
    assert report["run"] == f"staged, {len(segments)} segments in {pieces} pieces" and report["passed"]


@pytest.mark.parametrize(
    "preset,config",
    [  # one selector per stage for image blocks of any length (LLaVA-NeXT crops); per-bucket selectors
        ("llava-next-tiny", dict(method="fastv", method_args={"layer": "1"}, ratio=0.75)),
        ("llava-tiny", dict(method="fastervlm", buckets=[32, 64], llm_method="fastv", llm_method_args={"layer": "1"})),
    ],
    ids=["any-length", "buckets"],
)
def test_half_staged_decoders_of_other_layouts_are_checked_segment_by_segment(tmp_path, preset, config):
    out = compile_model(CompileSettings(model=preset, output=tmp_path / "a", target="onnx", precision=FP16, **config))
    decoder = json.loads((out / "manifest.json").read_text())["verification"]["decoder"]
    assert decoder["run"].startswith("staged, 2 segments in ") and decoder["passed"]
    assert [r["batch"] for r in decoder["stages"]] == [1, 2, 1, 2]  # the shortest and the longest block
    assert len({r["image_tokens"] for r in decoder["stages"]}) == 2
    assert all(k in ("exact", "near-tie") for r in decoder["stages"] for k in r["kept"])


def test_fp16_stored_weights_of_a_staged_decoder_keep_every_stages_rows_exactly(tmp_path, demo_image):
    settings = CompileSettings(
        model="llava-tiny",
        output=tmp_path / "s",
        target="ort",
        precision=PrecisionSettings(store_weights="fp16"),
        **CONFIGS["pdrop"],
    )
    out = compile_model(settings)
    m = json.loads((out / "manifest.json").read_text())
    stored = m["precision"]["stored_fp16"]["graphs"]
    assert all(stored[f"decoder_{i}"]["stored_bytes"] > 0 for i in range(4)) and m["runtime"]["dtype"] == "float32"
    decoder = m["verification"]["decoder"]
    assert decoder["passed"] and all(k == "exact" for r in decoder["stages"] for k in r["kept"])
    result = CompiledModel.load(out).generate(["What is it?"], [demo_image], max_new_tokens=2)
    assert result.llm_kept_indices is not None


def test_with_fp16_stored_weights_a_stage_near_tie_fails(monkeypatch):
    """fp32 arithmetic on fp16-stored weights: a stage's near-tie is a failure (as the vision graph's is)."""
    import tpc.compiler.verify_llm_precision as llm_precision
    from tpc.compiler.verify_precision import compare_reduced
    from tpc.errors import ParityError

    stages = [{"method": "fastv", "batch": 1, "image_tokens": 8, "kept": ["near-tie"], "passed": True}]
    report = {"stages": stages, "logit_cosine_min": 1.0, "token_agreement": 1.0, "passed": True}
    monkeypatch.setattr(llm_precision, "compare_llm", lambda *args: copy.deepcopy(report))
    references = {"vision": [], "llm": [{}], "llm_rule": None, "runtime": {}}
    half = PrecisionSettings(dtype="fp16").thresholds("fp16")
    assert compare_reduced(None, references, half, None, ([], None))["passed"]
    stored = PrecisionSettings(store_weights="fp16").thresholds("fp32")
    assert stored["exact_indices"]
    with pytest.raises(ParityError, match="fastv b1: stage indices near-tie"):
        compare_reduced(None, references, stored, None, ([], None))


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
        (["--dtype", "fp16", "--target", "onnx", "--method", "dart-llm"], "in-LLM dart-llm compiles in fp32 only"),
    ],
)
def test_in_llm_refusals_are_one_line(argv, message, tmp_path, capsys):
    method = [] if "--method" in argv else ["--method", "fastv"]
    base = ["compile", "llava-tiny", *method, "--ratio", "0.75", *argv]
    code, _, err = run_cli([*base, "-o", str(tmp_path / "x")], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
