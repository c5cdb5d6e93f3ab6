"""In-ViT selection: at the feature layer it is the plain method; earlier, a shortened ViT."""

import json

import pytest
import torch

from tests.conftest import run_cli
from tests.passes.helpers import context, pixels, traced
from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.methods import METHODS
from tpc.methods.in_vit import in_vit_reference
from tpc.passes import DEFAULT_PASSES, run_passes
from tpc.passes.select_in_vit import select_in_vit
from tpc.runtimes.compiled_model import CompiledModel


def _ctx(adapter, layer, keep=64):
    import dataclasses

    return dataclasses.replace(context(adapter, keep), select_layer=layer)


def test_at_the_feature_layer_it_is_the_plain_method(tiny_adapter):
    x = pixels()
    plain, _ = run_passes(traced(tiny_adapter), context(tiny_adapter), DEFAULT_PASSES)
    same, log = run_passes(traced(tiny_adapter), _ctx(tiny_adapter, tiny_adapter.vision.feature_layer), DEFAULT_PASSES)
    assert not {r["name"]: r for r in log}["select_in_vit"]["modified"]
    with torch.no_grad():
        a, b = plain(x), same(x)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])


def test_earlier_layer_matches_a_shortened_vit_reference(tiny_adapter):
    gm, log = run_passes(traced(tiny_adapter), _ctx(tiny_adapter, 0, keep=40), DEFAULT_PASSES)
    stats = {r["name"]: r for r in log}["select_in_vit"]["stats"]
    assert stats["tokens_after"] == 41 and stats["rewritten_shapes"] > 0
    for batch in (1, 2):
        x = pixels(batch, seed=batch)
        with torch.no_grad():
            features, kept = gm(x)
        ref_idx, ref_features, _ = in_vit_reference(tiny_adapter, x, 40, layer=0)
        assert torch.equal(kept, ref_idx)
        torch.testing.assert_close(features, ref_features, rtol=1e-4, atol=1e-5)
        plain_idx, _, _ = METHODS.get("fastervlm").reference(tiny_adapter, x, 40)
        overlap = len(set(kept[0].tolist()) & set(plain_idx[0].tolist())) / 40
        assert 0.0 <= overlap <= 1.0  # drift is reported by the benchmark; random weights make it arbitrary


def test_compiled_in_vit_artifact_runs(tmp_path, demo_image):
    out = compile_model(
        CompileSettings(model="llava-tiny", output=tmp_path / "a", keep=64, select_layer=0, target="onnx")
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"]["select_layer"] == 0 and manifest["verification"]["passed"]
    result = CompiledModel.load(out).generate(["What is it?"], [demo_image], max_new_tokens=3)
    assert result.kept_indices.shape == (1, 64)


def test_in_vit_usage_errors(tiny_adapter, tmp_path, capsys):
    from tpc.errors import UsageError

    with pytest.raises(UsageError, match="outside"):
        select_in_vit(traced(tiny_adapter), _ctx(tiny_adapter, 5))
    code, _, err = run_cli(
        ["compile", "llava-tiny", "--method", "divprune", "--select-layer", "0", "-o", str(tmp_path / "x")], capsys
    )
    assert code == 2 and "applies to fastervlm" in err
    assert list(tmp_path.iterdir()) == []
