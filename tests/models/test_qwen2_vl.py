"""Qwen2-VL through Qwen2.5-VL's adapter (tiny preset), and Qwen3-VL's refusal.

* the exported boundary (processor order, every block full attention) equals Hugging Face's tower;
* a ratio-0 artifact equals Hugging Face ``generate`` (greedy); a pruned one (received attention after
  the merger) equals the same model with the selection applied eagerly;
* ``tpc compile`` of a Qwen3-VL checkpoint fails in one line (DeepStack) and leaves no output behind.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import run_cli
from tests.models.qwen_pictures import PROMPT
from tests.models.qwen_pictures import picture as _picture
from tests.models.qwen_pictures import trim as _trim
from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.errors import ModelLoadError
from tpc.models.families import family_for
from tpc.models.presets import PRESETS, build_preset
from tpc.models.qwen2_5_vl import QwenVisionBoundary
from tpc.models.qwen2_vl import Qwen2VLAdapter
from tpc.models.qwen_reference import hf_generate, hf_pruned_generate
from tpc.runtimes.compiled_model import CompiledModel

NEW = 6


@pytest.fixture(scope="module")
def qwen2():
    model, processor = build_preset(PRESETS["qwen2-vl-tiny"])
    return Qwen2VLAdapter(model, processor)


def _compile(tmp_path, ratio: float | None, size: tuple[int, int]) -> CompiledModel:
    out = tmp_path / f"qwen2-vl-{ratio}"
    compile_model(CompileSettings(model="qwen2-vl-tiny", output=out, ratio=ratio, target="ort", image_sizes=[size]))
    return CompiledModel.load(out)


def test_adapter_reads_qwen2_vl_names(qwen2):
    """ViT width from ``embed_dim`` (48), merged-token width from ``hidden_size`` (the LLM's, 64)."""
    assert qwen2.family == "qwen2_vl" and not qwen2.window_order
    qwen2.set_grids([(12, 20)])
    assert (qwen2.vision.head_dim, qwen2.vision.feature_dim, qwen2.vision.num_patches) == (16, 64, 60)


def test_boundary_equals_hugging_face_tower(qwen2):
    for grid in [(6, 10), (12, 20)]:
        length = grid[0] * grid[1]
        patches = torch.randn(2, length, qwen2.patch_values, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ours = QwenVisionBoundary(qwen2.model, grid)(patches)
            thw = torch.tensor([[1, *grid]] * 2)
            ref = qwen2.model.model.visual(patches.reshape(2 * length, -1), grid_thw=thw).pooler_output
        torch.testing.assert_close(ours, ref.reshape(2, length // 4, -1), rtol=1e-4, atol=1e-4)


def test_ratio0_equals_hf_generate(qwen2, tmp_path):
    model = _compile(tmp_path, None, (224, 224))
    picture = _picture(224, 224, 1)
    got = model.generate([PROMPT], [picture], max_new_tokens=NEW)
    expected = hf_generate(qwen2.model, qwen2.processor, picture, PROMPT, NEW)
    assert got.token_ids[0] == _trim(expected, set(model.runtime["eos_token_ids"]))
    assert got.image_tokens == [224 * 224 // 28**2]


def test_pruned_equals_eager_reference(qwen2, tmp_path):
    from tpc.methods import get_method

    model = _compile(tmp_path, 0.75, (168, 280))
    picture = _picture(168, 280, 2)
    got = model.generate([PROMPT], [picture], max_new_tokens=NEW)
    tokens, kept, _ = hf_pruned_generate(qwen2, get_method("received"), {}, picture, PROMPT, NEW, 0.75)
    count = got.image_tokens[0]
    assert count == 15  # ceil(60 * 0.25)
    np.testing.assert_array_equal(got.kept_indices[0, :count], kept.numpy())
    assert got.token_ids[0] == _trim(tokens, set(model.runtime["eos_token_ids"]))


def test_qwen3_vl_is_refused_with_the_reason(tmp_path, capsys):
    import transformers

    config = transformers.Qwen3VLConfig(
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, num_position_embeddings=16
        ),
        text_config=dict(
            vocab_size=320,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        ),
    )
    checkpoint = tmp_path / "qwen3-vl"
    transformers.Qwen3VLForConditionalGeneration(config).save_pretrained(checkpoint)
    out = tmp_path / "out"
    code, _, err = run_cli(["compile", str(checkpoint), "-o", str(out)], capsys)
    assert code == ModelLoadError.exit_code
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0])  # one line, the last
    line = errors[0]
    assert "model type 'qwen3_vl' is not supported" in line and "DeepStack" in line
    assert "supported Qwen families: qwen2_vl (Qwen2-VL), qwen2_5_vl (Qwen2.5-VL)" in line
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["qwen3-vl"]
    with pytest.raises(ModelLoadError, match="Qwen3-VL-MoE: its DeepStack"):
        family_for("qwen3_vl_moe")
