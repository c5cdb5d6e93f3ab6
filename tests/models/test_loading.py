import json

import pytest

from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.errors import ModelLoadError, UsageError
from tpc.models import load_model
from tpc.models.llava import LlavaAdapter
from tpc.runtimes.compiled_model import CompiledModel


def test_presets_have_the_documented_geometry(tiny_adapter):
    v, t = tiny_adapter.vision, tiny_adapter.text
    assert (v.num_patches, v.image_size, v.num_layers, v.feature_layer) == (576, 336, 3, 1)
    assert t.image_token_id == 4 and t.eos_token_ids == (2,)


def test_bench_preset_matches_clip_vit_l_336_and_half_a_billion_llm():
    from tpc.models.presets import PRESETS

    p = PRESETS["llava-bench"]
    assert (p.vision["num_hidden_layers"], p.vision["hidden_size"], p.vision["patch_size"]) == (24, 1024, 14)
    t = p.text
    per_layer = 4 * t["hidden_size"] ** 2 + 3 * t["hidden_size"] * t["intermediate_size"]
    params = t["num_hidden_layers"] * per_layer + 2 * t["vocab_size"] * t["hidden_size"]
    assert 0.4e9 < params < 0.6e9


def test_save_pretrained_checkpoint_compiles_and_runs_like_the_preset(tiny, artifacts, tmp_path, demo_image):
    model, processor = tiny
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    processor.save_pretrained(ckpt)
    out = compile_model(CompileSettings(model=str(ckpt), output=tmp_path / "art", ratio=0.89))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["kind"] == "local" and manifest["model"]["revision"].startswith("config-sha256:")
    assert manifest["verification"]["passed"]
    mine = CompiledModel.load(out).generate(["What is it?"], [demo_image], max_new_tokens=8)
    preset = CompiledModel.load(artifacts(0.89, "ort")).generate(["What is it?"], [demo_image], max_new_tokens=8)
    assert mine.token_ids == preset.token_ids
    assert (mine.kept_indices == preset.kept_indices).all()


def test_unknown_names_and_non_llava(tmp_path):
    with pytest.raises(UsageError, match="unknown model"):
        load_model("definitely-not-a-model")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ModelLoadError, match="not supported"):
        load_model(str(tmp_path))


def test_adapter_rejects_other_models(tiny):
    class Fake:
        class config:
            model_type = "qwen2_vl"

    with pytest.raises(ModelLoadError, match="not LLaVA"):
        LlavaAdapter(Fake(), tiny[1])
