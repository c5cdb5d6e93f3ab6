"""Bucketed artifacts: one artifact, several kept-token counts, each exact; cls-mass adaptive budgets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import run_cli
from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.errors import UsageError
from tpc.methods.adaptive import mass_count, reference_mass_count
from tpc.profiling.profiler import ProfileConfig, profile_model
from tpc.runtimes.buckets import bucket_for
from tpc.runtimes.compiled_model import CompiledModel

BUCKETS = [32, 64, 128]


@pytest.fixture(scope="module")
def bucketed(tmp_path_factory):
    root = tmp_path_factory.mktemp("buckets")
    return compile_model(CompileSettings(model="llava-tiny", output=root / "b", buckets=BUCKETS, target="onnx"))


@pytest.fixture(scope="module")
def adaptive(tmp_path_factory):
    root = tmp_path_factory.mktemp("adaptive")
    return compile_model(
        CompileSettings(
            model="llava-tiny",
            output=root / "m",
            method="cls-mass",
            method_args={"mass": "0.5"},
            buckets=[32, 64, 128, 192],
            target="onnx",
        )
    )


def test_manifest_records_the_form_and_verification(bucketed):
    m = json.loads((bucketed / "manifest.json").read_text())
    assert m["buckets"]["sizes"] == BUCKETS and "per-bucket selector" in m["buckets"]["form"]
    assert set(m["graphs"]) == {
        "vision_encoder",
        "select_k32",
        "select_k64",
        "select_k128",
        "projector",
        "embed",
        "decoder",
    }
    assert m["verification"]["passed"]
    assert {r["bucket"] for r in m["verification"]["vision"]} == set(BUCKETS)
    # selectors hold no weights: every weight lives once, in the encoder, projector or decoder
    assert not (bucketed / "select_k64.onnx.data").exists() or (bucketed / "select_k64.onnx.data").stat().st_size < 4096


def test_each_bucket_selects_what_the_fixed_artifact_selects(bucketed, artifacts, demo_image):
    model = CompiledModel.load(bucketed)
    pixels = torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(5)).numpy()
    for keep in (32, 64):
        fixed = CompiledModel.load(artifacts(None, "onnx", keep))
        model.set_budget(keep=keep)
        features, kept, counts = model.bucketed(pixels)
        want_features, want_kept = fixed.graphs.vision(pixels)
        assert counts == [keep, keep]
        assert np.array_equal(kept, want_kept)
        np.testing.assert_allclose(features, want_features, rtol=1e-5, atol=1e-6)
        got = model.generate(["What is it?"], [demo_image], max_new_tokens=6)
        want = fixed.generate(["What is it?"], [demo_image], max_new_tokens=6)
        assert got.token_ids == want.token_ids


def test_budget_requests_round_up_and_reject_outside(bucketed, artifacts):
    model = CompiledModel.load(bucketed)
    assert model.set_budget(keep=64) == 64
    assert model.set_budget(keep=50) == 64
    assert model.set_budget(ratio=0.889) == 64
    assert model.set_budget(ratio=0.95) == 32
    with pytest.raises(UsageError, match="more than the largest compiled bucket"):
        model.set_budget(keep=129)
    fixed = CompiledModel.load(artifacts(0.89, "ort"))
    with pytest.raises(UsageError, match="compiled with --buckets"):
        fixed.set_budget(keep=32)


def test_planted_mass_counts():
    # powers of two: sums and shares are exact in float32 and float64, so boundaries are exact too
    scores = torch.tensor([[0.5, 0.25, 0.125, 0.125], [0.25, 0.25, 0.25, 0.25], [0.125, 0.75, 0.0625, 0.0625]])
    for mass in (0.1, 0.5, 0.75, 0.8, 0.9, 1.0):
        assert mass_count(scores, mass).tolist() == reference_mass_count(scores, mass)
    assert mass_count(scores, 0.5).tolist() == [1, 2, 1]  # reaching the mass exactly counts
    assert mass_count(scores, 0.8).tolist() == [3, 4, 2]
    torch.manual_seed(0)
    random = torch.softmax(torch.randn(3, 576) * 3, dim=-1)
    for mass in (0.3, 0.9):
        assert mass_count(random, mass).tolist() == reference_mass_count(random, mass)
    assert bucket_for(33, [32, 64]) == 64 and bucket_for(32, [32, 64]) == 32


def test_adaptive_artifact_counts_match_the_reference_and_profile_histogram(adaptive, tiny_adapter, demo_image):
    from tpc.methods import get_method

    m = json.loads((adaptive / "manifest.json").read_text())
    assert m["buckets"]["adaptive"] and m["verification"]["passed"]
    model = CompiledModel.load(adaptive)
    pixels = torch.randn(2, 3, 336, 336, generator=torch.Generator().manual_seed(9))
    _, _, counts = model.bucketed(pixels.numpy())
    _, _, scores = get_method("fastervlm").reference(tiny_adapter, pixels, 64)
    expected = [min(bucket_for(c, [32, 64, 128, 192, 10**9]), 192) for c in reference_mass_count(scores, 0.5)]
    assert counts == expected
    with pytest.raises(UsageError, match="per image"):
        model.set_budget(keep=64)
    profile = profile_model(model, ProfileConfig(runs=2, warmup=0, new_tokens=2, prompt_tokens=8))
    histogram = profile["buckets"]["histogram"]
    assert set(histogram) == {"32", "64", "128", "192"} and sum(histogram.values()) == 2


def test_bucket_usage_errors(tmp_path, capsys):
    code, _, err = run_cli(["compile", "llava-tiny", "--method", "cls-mass", "-o", str(tmp_path / "x")], capsys)
    assert code == 2 and "--buckets" in err
    code, _, err = run_cli(["compile", "llava-tiny", "--buckets", "32,x", "-o", str(tmp_path / "y")], capsys)
    assert code == 2 and "comma-separated" in err
    code, _, err = run_cli(["compile", "llava-tiny", "--buckets", "32,900", "-o", str(tmp_path / "z")], capsys)
    assert code == 2 and "[1, 576]" in err
    assert list(tmp_path.iterdir()) == []


def test_trt_plan_for_buckets(tmp_path):
    out = compile_model(
        CompileSettings(
            model="llava-tiny", output=tmp_path / "t", buckets=[32, 64], keep=32, target="trt", verify=False
        )
    )
    m = json.loads((out / "manifest.json").read_text())
    engines = m["trt_plan"]["engines"]
    assert [p["name"] for p in engines["projector"]["profiles"]] == ["k32", "k64"]
    assert engines["projector"]["profiles"][1]["shapes"]["tokens"]["max"] == [1, 64, 64]
    # default bucket 32, but the embedding and prefill profiles must reach the largest bucket
    embed = engines["embed"]["profiles"][0]["shapes"]
    assert embed["image_features"]["max"] == [1, 64, 64] and embed["image_features"]["opt"] == [1, 32, 64]
    assert engines["decoder"]["profiles"][0]["shapes"]["inputs_embeds"]["max"][1] == 512 + 64
    assert all(r["ok"] for r in m["trt_check"])
    assert "--profile=1" in (out / "build_engines.sh").read_text()
