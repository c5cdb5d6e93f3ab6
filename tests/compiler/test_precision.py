"""Reduced precision: half-precision loading and graphs, weight-only quantization, agreement with fp32."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from tests.conftest import run_cli
from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.compiler.precision import PrecisionSettings
from tpc.models import load_model
from tpc.models.loading import cast_weights
from tpc.models.presets import PRESETS, build_preset
from tpc.models.upcast import fp32_reference
from tpc.runtimes.compiled_model import CompiledModel


@pytest.fixture(scope="module")
def half_checkpoint(tmp_path_factory):
    """llava-tiny saved as an fp16 checkpoint directory."""
    model, processor = build_preset(PRESETS["llava-tiny"])
    root = tmp_path_factory.mktemp("fp16-checkpoint")
    model.half().save_pretrained(root)
    processor.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def precision_artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    built = {}
    configs = {
        "fp16": dict(target="onnx", precision=PrecisionSettings(dtype="fp16")),
        "int8": dict(target="ort", precision=PrecisionSettings(quantize=8)),
        # int4 on a 64-wide random model loses far more than on a real one: thresholds set by the user
        "int4": dict(
            target="ort", precision=PrecisionSettings(quantize=4, min_logit_cosine=0.5, min_token_agreement=0.2)
        ),
    }

    def get(name: str):
        if name not in built:
            built[name] = compile_model(
                CompileSettings(model="llava-tiny", output=root / name, ratio=0.5, **configs[name])
            )
        return built[name]

    return get


def test_a_half_precision_checkpoint_loads_without_fp32_weights(half_checkpoint):
    loaded = load_model(str(half_checkpoint), "auto")
    dtypes = {p.dtype for p in loaded.model.parameters()}
    assert dtypes == {torch.float16}
    assert {p.dtype for p in load_model(str(half_checkpoint), "fp32").model.parameters()} == {torch.float32}


def test_fp32_reference_equals_an_fp32_copy_and_restores_the_half_weights():
    model, _ = build_preset(PRESETS["llava-tiny"])
    half = build_preset(PRESETS["llava-tiny"])[0]
    cast_weights(half, torch.float16)
    fp32_of_half = build_preset(PRESETS["llava-tiny"])[0]
    fp32_of_half.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
    embeds = torch.randn(1, 9, model.config.text_config.hidden_size)
    widest = []

    def watch(module, args):
        widest.append(sum(p.numel() for p in half.parameters() if p.dtype == torch.float32))

    lm = half.model.language_model
    handle = lm.layers[-1].mlp.register_forward_pre_hook(watch)
    with torch.no_grad(), fp32_reference(half):
        got = lm(inputs_embeds=embeds).last_hidden_state
    handle.remove()
    want = fp32_of_half.model.language_model(inputs_embeds=embeds).last_hidden_state
    assert torch.allclose(got, want, atol=1e-5)
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    total = sum(p.numel() for p in half.parameters())
    assert widest and widest[0] < total / 2  # never the whole model in fp32


def test_fp16_artifact_has_half_weights_and_agrees_with_fp32(precision_artifacts, demo_image):
    out = precision_artifacts("fp16")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"]["dtype"] == "fp16" and manifest["runtime"]["dtype"] == "float16"
    decoder = onnx.load(str(out / "decoder.onnx"))
    weights = [
        t for t in decoder.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    ]
    big = [t for t in weights if np.prod(t.dims) >= 1024]
    assert big and all(t.data_type == onnx.TensorProto.FLOAT16 for t in big)
    v = manifest["verification"]
    assert v["mode"] == "agreement with fp32" and v["passed"]
    assert all(r["indices"] in ("exact", "near-tie") for r in v["vision"])
    assert v["decoder"]["logit_cosine_min"] >= 0.999
    result = CompiledModel.load(out).generate(["What is it?"], [demo_image], max_new_tokens=3)
    assert len(result.token_ids[0]) >= 1 and result.kept_indices.shape[1] == manifest["keep"]


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_decoder_is_matmulnbits_and_its_agreement_is_recorded(precision_artifacts, bits):
    out = precision_artifacts(f"int{bits}")
    manifest = json.loads((out / "manifest.json").read_text())
    graph = onnx.load(str(out / manifest["graphs"]["decoder"]["file"]), load_external_data=False)
    nbits = [n for n in graph.graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all(a.i == bits for n in nbits for a in n.attribute if a.name == "bits")
    vision = onnx.load(str(out / manifest["graphs"]["vision"]["file"]), load_external_data=False)
    assert not any(n.op_type == "MatMulNBits" for n in vision.graph.node)  # selection runs unquantized
    precision = manifest["precision"]
    assert precision["quantize"]["bits"] == bits and precision["quantized_graphs"]["decoder"]["quantized"] > 0
    v = manifest["verification"]
    assert all(r["indices"] == "exact" for r in v["vision"])  # fp32 vision graph: the kept set is unchanged
    assert set(v["decoder"]) >= {"logit_cosine_min", "token_agreement"}
    assert precision["thresholds"] == {k: v["thresholds"][k] for k in ("min_logit_cosine", "min_token_agreement")}


def test_a_threshold_violation_fails_compile_with_its_numbers(tmp_path, capsys):
    out = tmp_path / "x"
    argv = ["compile", "llava-tiny", "--ratio", "0.5", "--quantize", "int8", "--min-logit-cosine", "0.999999"]
    code, _, err = run_cli([*argv, "-o", str(out)], capsys)
    assert code != 0 and "logit cosine min" in err and "needs >= 0.999999" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--dtype", "bf16"], "no bf16 kernels"),
        (["--quantize", "int4", "--target", "trt", "--no-build"], "weight-only MatMulNBits; for TensorRT"),
        (["--quantize", "int4", "--llm-method", "fastv"], "--quantize with in-LLM pruning (fastv) is refused"),
        (["--quantize", "int4", "--quant-block-size", "24"], "--quant-block-size"),
        (["--min-token-agreement", "1.5"], "--min-token-agreement 1.5 is outside [0, 1]"),
        (["--dtype", "fp16", "--method", "cls-mass", "--buckets", "32,64"], "(an adaptive budget) compile in fp32"),
    ],
)
def test_bad_precision_flags_are_one_line_errors(argv, message, tmp_path, capsys):
    code, _, err = run_cli(["compile", "llava-tiny", "--ratio", "0.5", *argv, "-o", str(tmp_path / "x")], capsys)
    assert code == 2 and message in err
    assert not (tmp_path / "x").exists()


def test_trt_int8_plan_records_its_requirement_and_build_refuses_graphs_without_qdq(tmp_path, capsys):
    from tpc.compiler.trt_build import check_quantized_graphs
    from tpc.compiler.trt_plan import trtexec_command
    from tpc.errors import ArtifactError

    out = tmp_path / "trt"
    argv = ["compile", "llava-tiny", "--ratio", "0.5", "--target", "trt", "--no-build", "--precision", "int8"]
    code, stdout, err = run_cli([*argv, "-o", str(out)], capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    plan = manifest["trt_plan"]
    assert plan["precision"] == "int8" and "QuantizeLinear/DequantizeLinear" in plan["requires"]
    assert "ModelOpt" in plan["requires"]
    assert manifest["precision"]["dtype"] == "fp16"  # trt graphs default to half precision
    assert {"--fp16", "--int8"} <= set(trtexec_command(plan, "decoder"))
    with pytest.raises(ArtifactError, match="carry no Q/DQ nodes"):
        check_quantized_graphs(out, plan)


@pytest.mark.parametrize("preset", ["llava-tiny", "llava-onevision-tiny"])
def test_divprune_in_half_precision_is_checked_by_replaying_its_greedy(tmp_path, capsys, preset):
    """DivPrune's greedy has no score to rank a swap by: rounding moved near-ties on these random towers
    (another kept set), each pick of which the replay finds as far as fp32's best; features at its picks."""
    argv = ["compile", preset, "--method", "divprune", "--ratio", "0.89", "--target", "trt", "--no-build"]
    code, _, err = run_cli([*argv, "-o", str(tmp_path / "a")], capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["precision"]["dtype"] == "fp16"
    vision = m["verification"]["vision"]
    assert "near-tie" in [r["indices"] for r in vision] and all(r["passed"] for r in vision)
    assert min(r["kept_overlap"] for r in vision) < 1 and min(r["feature_cosine_min"] for r in vision) >= 0.999
