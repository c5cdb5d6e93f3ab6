"""Reduced precision with ``--buckets``: every bucket's kept indices checked against the fp32 reference."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from tests.conftest import run_cli
from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.compiler.precision import PrecisionSettings, load_dtype
from tpc.compiler.verify_precision import compare_reduced, index_verdict, reduced_references
from tpc.errors import ParityError
from tpc.methods import get_method
from tpc.runtimes.compiled_model import CompiledModel

BUCKETS = [32, 64]


@pytest.fixture(scope="module")
def half_buckets(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp16-buckets") / "b"
    return compile_model(
        CompileSettings(
            model="llava-tiny", output=out, buckets=BUCKETS, target="onnx", precision=PrecisionSettings(dtype="fp16")
        )
    )


@pytest.fixture(scope="module")
def references(half_buckets, tiny_adapter):
    manifest = json.loads((half_buckets / "manifest.json").read_text())
    method = get_method(manifest["method"]["vision_method"])
    params = manifest["method"]["parameters"]
    return reduced_references(tiny_adapter, method, manifest["keep"], params, None, manifest["buckets"])


def test_fp16_buckets_compile_and_record_a_check_per_bucket(half_buckets):
    m = json.loads((half_buckets / "manifest.json").read_text())
    assert m["precision"]["dtype"] == "fp16" and m["runtime"]["dtype"] == "float16"
    assert m["buckets"]["sizes"] == BUCKETS
    v = m["verification"]
    assert v["mode"] == "agreement with fp32" and v["passed"]
    assert v["buckets"] == {"32": True, "64": True}
    assert sorted((r["bucket"], r["batch"]) for r in v["vision"]) == [(k, b) for k in BUCKETS for b in (1, 2)]
    assert all(r["indices"] in ("exact", "near-tie") for r in v["vision"])
    assert v["decoder"]["logit_cosine_min"] >= 0.999


def test_each_bucket_keeps_the_fp32_references_indices(half_buckets, tiny_adapter, demo_image):
    model = CompiledModel.load(half_buckets)
    method = get_method("fastervlm")
    pixels = torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(5))
    for keep in BUCKETS:
        assert model.set_budget(keep=keep) == keep
        features, kept, counts = model.bucketed(pixels.numpy())
        want, want_features, scores = method.reference(tiny_adapter, pixels, keep)
        assert counts == [keep, keep] and kept.shape == (2, keep)
        verdict, _ = index_verdict(kept, want.numpy(), scores.numpy())
        assert verdict in ("exact", "near-tie")
        if verdict == "exact":
            np.testing.assert_allclose(features, want_features.numpy(), rtol=2e-2, atol=2e-2)
        got = model.generate(["What is it?"], [demo_image], max_new_tokens=2)
        assert got.kept_indices.shape[1] == keep and len(got.token_ids[0]) >= 1


def test_a_planted_bucket_disagreement_fails_with_its_numbers(half_buckets, references):
    graphs = CompiledModel.load(half_buckets).graphs
    thresholds = PrecisionSettings(dtype="fp16").thresholds("fp16")
    assert compare_reduced(graphs, references, thresholds)["passed"]
    planted = copy.deepcopy(references)
    ref = next(r for r in planted["vision"] if r["bucket"] == 32 and r["batch"] == 2)
    lowest = np.argsort(ref["scores"], axis=-1)[:, :32]  # the least-scored tokens: far from any near-tie
    ref["indices"] = np.sort(lowest, axis=-1)
    with pytest.raises(ParityError, match=r"vision k32 b2: indices mismatch \(overlap 0\.\d\d\)") as caught:
        compare_reduced(graphs, planted, thresholds)
    assert "k64" not in str(caught.value)


def test_quantized_and_fp16_stored_buckets_keep_the_indices_exactly(tmp_path):
    precision = PrecisionSettings(quantize=8, store_weights="fp16")
    out = compile_model(
        CompileSettings(model="llava-tiny", output=tmp_path / "q", buckets=BUCKETS, target="onnx", precision=precision)
    )
    m = json.loads((out / "manifest.json").read_text())
    v = m["verification"]
    assert m["precision"]["thresholds"]["exact_indices"] and v["passed"]
    assert v["buckets"] == {"32": True, "64": True}
    assert all(r["indices"] == "exact" for r in v["vision"])


def test_load_dtype_with_buckets_follows_the_target():
    default = PrecisionSettings()
    assert load_dtype(default, "trt", None, BUCKETS) == "fp16"
    assert load_dtype(default, "ort", None, BUCKETS) == "fp32"
    assert load_dtype(default, "onnx", None, BUCKETS) == "auto"
    assert load_dtype(default, "trt", None, BUCKETS, "cls-mass") == "fp32"  # adaptive budgets: fp32 only
    assert load_dtype(default, "trt", "dart", BUCKETS) == "fp32"  # LLM-input selection: fp32 only
    assert load_dtype(PrecisionSettings(dtype="fp16"), "ort", None, BUCKETS) == "fp16"


@pytest.mark.parametrize(
    "argv",
    [
        ["--dtype", "fp16", "--target", "onnx"],
        ["--quantize", "int8"],
        ["--store-weights", "fp16"],
    ],
)
def test_adaptive_buckets_with_reduced_precision_are_refused_in_one_line(argv, tmp_path, capsys):
    base = ["compile", "llava-tiny", "--method", "cls-mass", "--buckets", "32,64", *argv]
    code, _, err = run_cli([*base, "-o", str(tmp_path / "x")], capsys)
    assert code == 2 and "--buckets with cls-mass (an adaptive budget) compile in fp32 only" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
