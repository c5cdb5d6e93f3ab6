"""Methods on a vision encoder without [CLS] (LLaVA-OneVision's SigLIP), per crop.

Every method that applies is recorded into the traced per-crop graph by the default passes and
must pick the same tokens as its independent eager reference (received attention from a full
attention matrix, VisionZip with no [CLS] slot, DivPrune's naive greedy, the baselines on the
27 x 27 grid); the [CLS] methods are refused with one line naming the methods that apply.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import run_cli
from tests.passes.helpers import traced
from tpc.methods import METHODS
from tpc.models.families import make_adapter
from tpc.models.presets import PRESETS, build_preset
from tpc.passes import DEFAULT_PASSES, PassContext, run_passes

CASES = [
    ("received", {}, 81),
    ("visionzip", {}, 81),
    ("visionzip", {"dominant": "54", "contextual": "10"}, 64),
    ("divprune", {}, 81),
    ("uniform", {}, 81),
    ("pool", {}, 81),
    ("random", {"seed": "5"}, 81),
]


@pytest.fixture(scope="module")
def onevision():
    return make_adapter(*build_preset(PRESETS["llava-onevision-tiny"]))


@pytest.mark.parametrize("name,args,keep", CASES, ids=[f"{m}-{k}-{len(a)}" for m, a, k in CASES])
def test_graph_selection_equals_the_reference_per_crop(onevision, name, args, keep):
    method = METHODS.get(name)
    params = method.parse_args(args)
    if method.resolve_params is not None:
        params, _ = method.resolve_params(onevision.vision, params, set(args))
    assert not method.needs_cls
    ctx = PassContext(layout=onevision.vision, method=method, keep=keep, params=params)
    gm, _ = run_passes(traced(onevision), ctx, DEFAULT_PASSES)
    crops = torch.randn(3, 3, 384, 384, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        features, kept = gm(crops)
    indices, expected, _ = method.reference(onevision, crops, keep, **params)
    assert kept.shape == (3, keep) and features.shape == (3, keep, onevision.vision.feature_dim)
    assert torch.equal(kept, indices)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
    if name == "visionzip":  # no [CLS] slot: every kept index is a patch (dominant, then contextual targets)
        assert params["cls_token"] is False and int(kept.min()) >= 0
    if name == "received":  # kept in raster order (METHODS.md)
        assert bool((kept.diff(dim=-1) > 0).all())


@pytest.mark.parametrize("name", ["fastervlm", "vtc-cls", "cls-mass"])
def test_cls_methods_are_refused_with_the_methods_that_apply(tmp_path, capsys, name):
    argv = ["compile", "llava-onevision-tiny", "--method", name, "--ratio", "0.889", "-o", str(tmp_path / "x")]
    if name == "cls-mass":
        argv += ["--buckets", "32,64"]
    code, _, err = run_cli(argv, capsys)
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    assert f"method {name} scores with the [CLS] attention row" in lines[0]
    assert "LLaVA-OneVision" in lines[0]
    assert "methods that apply: divprune, pool, random, received, uniform, visionzip" in lines[0]
    assert not (tmp_path / "x").exists()
