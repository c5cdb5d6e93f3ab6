"""Every method: compiled graph == independent PyTorch reference, batch 1 and 2."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.errors import UsageError
from tpc.methods import METHODS, get_method
from tpc.methods.baselines import pool_windows, uniform_indices
from tpc.methods.divprune import divprune_select, naive_divprune
from tpc.methods.visionzip import split_budget
from tpc.runtimes.compiled_model import CompiledModel

PLUGIN = Path(__file__).resolve().parents[2] / "examples" / "plugin"

CASES = [
    ("fastervlm", {}, 64),
    ("vtc-cls", {}, 64),
    ("vtc-cls", {"start_layer": "0"}, 40),
    ("visionzip", {"dominant": "54", "contextual": "10"}, 64),
    ("visionzip", {}, 33),
    ("divprune", {}, 64),
    ("uniform", {}, 58),
    ("pool", {}, 64),
    ("random", {"seed": "3"}, 64),
]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    cache = {}

    def get(method, args, keep):
        key = (method, tuple(sorted(args.items())), keep)
        if key not in cache:
            out = root / f"{method.replace(':', '.')}-{len(cache)}"
            cache[key] = compile_model(
                CompileSettings(
                    model="llava-tiny", output=out, method=method, keep=keep, method_args=args, target="onnx"
                )
            )
        return cache[key]

    return get


@pytest.mark.parametrize("method,args,keep", CASES, ids=[f"{m}-{k}" for m, _, k in CASES])
def test_method_compiles_verifies_and_matches_reference(compiled, tiny_adapter, method, args, keep):
    import json

    root = compiled(method, args, keep)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["verification"]["passed"], manifest["verification"]
    assert all(v["indices"] == "exact" for v in manifest["verification"]["vision"])
    model = CompiledModel.load(root)
    impl = get_method(method)
    params = impl.parse_args(args)
    if impl.resolve_params is not None:  # what the compile used on this model (recorded in the manifest)
        params, _ = impl.resolve_params(tiny_adapter.vision, params, set(args))
    assert manifest["method"]["parameters"] == params
    for batch in (1, 2):
        pixels = torch.randn(batch, 3, 336, 336, generator=torch.Generator().manual_seed(10 + batch))
        features, kept = model.graphs.vision(pixels.numpy())
        ref_idx, ref_features, _ = impl.reference(tiny_adapter, pixels, keep, **params)
        assert kept.shape == (batch, keep)
        assert np.array_equal(kept, ref_idx.numpy())
        np.testing.assert_allclose(features, ref_features.numpy(), rtol=1e-3, atol=1e-4)


def test_divprune_running_minimum_equals_naive_greedy_with_planted_ties():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 40, 8, generator=generator)
    features[0, 5] = features[0, 3]  # duplicates: distance 0, a tie
    features[0, 17] = features[0, 3] * 2.0  # same direction: cosine distance 0 as well
    features[1, 30] = -features[1, 2]  # antipodal: the farthest pair
    values = {"features": features}
    for keep in (1, 7, 20, 40):
        kept, tokens = divprune_select(values, keep)
        assert kept.tolist() == naive_divprune(features, keep).tolist()
        assert torch.equal(tokens, torch.gather(features, 1, kept.unsqueeze(-1).expand(-1, -1, 8)))


def test_baseline_geometry():
    assert uniform_indices(576, 64) == sorted(uniform_indices(576, 64))
    assert len(set(uniform_indices(576, 58))) == 58
    assert uniform_indices(576, 4) == [6 * 24 + 6, 6 * 24 + 18, 18 * 24 + 6, 18 * 24 + 18]
    windows = pool_windows(576, 64)
    assert len(windows) == 64 and all(len(w) == 9 for w in windows)
    with pytest.raises(UsageError, match="square number"):
        pool_windows(576, 128)


def test_visionzip_budget_split():
    assert split_budget(64, {}) == (54, 10)
    assert split_budget(64, {"dominant": 54, "contextual": 10}) == (54, 10)
    with pytest.raises(UsageError, match="!= 64"):
        split_budget(64, {"dominant": 50, "contextual": 10})


def test_method_args_are_validated():
    with pytest.raises(UsageError, match="has no parameter 'nope'"):
        METHODS.get("random").parse_args({"nope": "1"})
    with pytest.raises(UsageError, match="expected int"):
        METHODS.get("random").parse_args({"seed": "abc"})
    with pytest.raises(UsageError, match=r"must be in \[0, inf\)"):
        METHODS.get("vtc-cls").parse_args({"start_layer": "-1"})


def test_plugin_score_compiles_runs_and_verifies(compiled, demo_image, monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN))
    root = compiled("mypkg.scores:edge_energy", {}, 58)
    model = CompiledModel.load(root)
    result = model.generate(["What is it?"], [demo_image], max_new_tokens=4)
    assert result.kept_indices.shape == (1, 58)
    with pytest.raises(UsageError, match="cannot import"):
        get_method("nopkg.nomodule:fn")
    with pytest.raises(UsageError, match="has no attribute"):
        get_method("mypkg.scores:missing")
    sys.modules.pop("mypkg.scores", None)


def test_entry_point_methods_are_found_by_name(monkeypatch):
    from importlib import metadata

    import tpc.methods.entry_points as entry_points

    monkeypatch.syspath_prepend(str(PLUGIN))
    fake = metadata.EntryPoint(
        name="edge-energy", value="mypkg.scores:edge_energy", group=entry_points.ENTRY_POINT_GROUP
    )
    monkeypatch.setattr(entry_points, "entry_point_methods", lambda: {"edge-energy": fake})
    method = get_method("edge-energy")
    assert method.name == "edge-energy" and method.extra["plugin"]
    assert method.needs == ("cls_attention",)
    with pytest.raises(UsageError, match="unknown method 'nothing'"):
        get_method("nothing")
