import dataclasses

import pytest
import torch

from tests.passes.helpers import context, pixels, traced
from tpc.errors import ExportError
from tpc.methods import METHODS
from tpc.passes import DEFAULT_PASSES, run_passes
from tpc.passes.expose_cls_attention import expose_cls_attention
from tpc.passes.insert_token_selection import insert_token_selection


@pytest.mark.parametrize("keep", [64, 1, 576])
def test_selects_what_the_reference_selects(tiny_adapter, keep):
    gm = traced(tiny_adapter)
    gm = expose_cls_attention(gm, context(tiny_adapter, keep)).graph_module
    result = insert_token_selection(gm, context(tiny_adapter, keep))
    assert result.modified and result.stats["keep"] == keep
    result.graph_module.recompile()
    x = pixels()
    with torch.no_grad():
        features, kept = result.graph_module(x)
    ref_idx, ref_features, _ = METHODS.get("fastervlm").reference(tiny_adapter, x, keep)
    assert kept.shape == (2, keep) and torch.equal(kept, ref_idx)
    torch.testing.assert_close(features, ref_features, rtol=1e-5, atol=1e-6)


def test_ratio_zero_path_is_the_unpruned_model(tiny_adapter):
    gm = traced(tiny_adapter)
    x = pixels()
    with torch.no_grad():
        plain = gm(x)[0]
    n = tiny_adapter.vision.num_patches
    gm, _ = run_passes(gm, context(tiny_adapter, n), DEFAULT_PASSES)
    with torch.no_grad():
        features, kept = gm(x)
    assert torch.equal(kept, torch.arange(n).expand(2, n))
    assert torch.equal(features, plain)


def test_is_idempotent(tiny_adapter):
    gm = expose_cls_attention(traced(tiny_adapter), context(tiny_adapter)).graph_module
    assert insert_token_selection(gm, context(tiny_adapter)).modified
    assert not insert_token_selection(gm, context(tiny_adapter)).modified


def test_missing_exposed_value_is_a_clear_error(tiny_adapter):
    gm = traced(tiny_adapter)  # expose_cls_attention has not run
    with pytest.raises(ExportError, match="cls_attention"):
        insert_token_selection(gm, context(tiny_adapter))


def test_pass_runner_names_earlier_passes_on_failure_and_dumps(tiny_adapter, tmp_path):
    def explode(gm, ctx):
        raise RuntimeError("boom")

    broken = dataclasses.replace(context(tiny_adapter))
    with pytest.raises(ExportError, match=r"pass explode failed \(after remove_dead_vision_layers.*boom"):
        run_passes(traced(tiny_adapter), broken, (DEFAULT_PASSES[0], explode), dump_dir=tmp_path)
    assert (tmp_path / "00_remove_dead_vision_layers.before.txt").exists()
    assert (tmp_path / "00_remove_dead_vision_layers.after.txt").exists()


def test_dump_env_variable(tiny_adapter, tmp_path, monkeypatch):
    monkeypatch.setenv("TPC_DUMP_GRAPHS", str(tmp_path))
    _, log = run_passes(traced(tiny_adapter), context(tiny_adapter), DEFAULT_PASSES)
    assert [r["name"] for r in log] == [p.__name__ for p in DEFAULT_PASSES]
    dumped = sorted(p.name for p in tmp_path.iterdir())
    assert len(dumped) == 2 * len(DEFAULT_PASSES)
    position = [p.__name__ for p in DEFAULT_PASSES].index("insert_token_selection")
    assert "topk" in (tmp_path / f"{position:02d}_insert_token_selection.after.txt").read_text()
