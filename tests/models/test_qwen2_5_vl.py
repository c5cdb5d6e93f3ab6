"""Qwen2.5-VL end to end on the tiny preset: compiled artifacts against Hugging Face, token for token.

* ratio 0 equals Hugging Face ``generate`` (greedy) for pictures of three grid shapes and text only;
* pruned (received attention after the merger) equals the same model with the selection applied
  eagerly: kept indices from Hugging Face's own tower (window order undone), the kept tokens and the
  text at the UNPRUNED prompt's 3-D positions;
* a picture whose grid was not compiled is resized to the nearest compiled grid and runs as Hugging
  Face runs the resized picture;
* a batch of two pictures of different grids equals each picture alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.models.qwen_pictures import PROMPT
from tests.models.qwen_pictures import picture as _picture
from tests.models.qwen_pictures import trim as _trim
from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.models.presets import PRESETS, build_preset
from tpc.models.qwen2_5_vl import QwenVisionBoundary, QwenVLAdapter
from tpc.models.qwen_reference import hf_generate, hf_pruned_generate
from tpc.runtimes.compiled_model import CompiledModel

NEW = 6
SIZES = [(224, 224), (168, 280), (280, 168)]  # the preset's compiled sizes: grids 16x16, 12x20, 20x12


@pytest.fixture(scope="module")
def qwen():
    model, processor = build_preset(PRESETS["qwen2.5-vl-tiny"])
    return QwenVLAdapter(model, processor)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen")
    built = {}

    def get(ratio: float):
        if ratio not in built:
            out = root / f"qwen-{ratio}"
            compile_model(CompileSettings(model="qwen2.5-vl-tiny", output=out, ratio=ratio or None, target="ort"))
            built[ratio] = CompiledModel.load(out)
        return built[ratio]

    return get


def test_boundary_equals_hugging_face_tower(qwen):
    """Processor order with windows gathered = HF's window-order tower, on grids that are not window multiples."""
    for grid in [(6, 10), (12, 20), (34, 50)]:
        qwen.set_grids([grid])
        length = grid[0] * grid[1]
        patches = torch.randn(2, length, qwen.patch_values, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ours = QwenVisionBoundary(qwen.model, grid)(patches)
            thw = torch.tensor([[1, *grid]] * 2)
            ref = qwen.model.model.visual(patches.reshape(2 * length, -1), grid_thw=thw).pooler_output
        torch.testing.assert_close(ours, ref.reshape(2, length // 4, -1), rtol=1e-4, atol=1e-4)


def test_ratio0_equals_hf_generate(qwen, compiled):
    model = compiled(0.0)
    eos = set(model.runtime["eos_token_ids"])
    for seed, (height, width) in enumerate(SIZES):
        picture = _picture(height, width, seed)
        got = model.generate([PROMPT], [picture], max_new_tokens=NEW)
        expected = hf_generate(qwen.model, qwen.processor, picture, PROMPT, NEW)
        assert got.token_ids[0] == _trim(expected, eos), (height, width)
        assert got.pictures[0]["resized_to"] is None
        assert got.image_tokens == [height * width // 28**2]
    text_only = model.generate([PROMPT], None, max_new_tokens=NEW)
    assert text_only.token_ids[0] == _trim(hf_generate(qwen.model, qwen.processor, None, PROMPT, NEW), eos)


def test_pruned_equals_eager_reference(qwen, compiled):
    from tpc.methods import get_method

    model = compiled(0.75)
    method = get_method("received")
    eos = set(model.runtime["eos_token_ids"])
    for seed, (height, width) in enumerate(SIZES[:2]):
        picture = _picture(height, width, seed + 10)
        got = model.generate([PROMPT], [picture], max_new_tokens=NEW)
        tokens, kept, _ = hf_pruned_generate(qwen, method, {}, picture, PROMPT, NEW, 0.75)
        count = got.image_tokens[0]
        assert count == -(-(height * width // 28**2) // 4)  # ceil(M * 0.25)
        np.testing.assert_array_equal(got.kept_indices[0, :count], kept.numpy())
        assert got.token_ids[0] == _trim(tokens, eos)


def test_kept_positions_are_the_unpruned_ones(qwen, compiled):
    """The runtime's 3-D positions of a pruned prompt = ``get_rope_index`` of the unpruned prompt, kept rows."""
    from tpc.methods import get_method
    from tpc.runtimes.generate import prompt_positions
    from tpc.runtimes.image_layout import kept_per_picture

    model = compiled(0.75)
    picture = _picture(168, 280, 3)
    crops = model.encoder.crops([picture], 1, model.layout)
    features, kept, counts = model.layout.run(model.graphs, crops)
    batch = model.encoder.tokens([PROMPT], counts)
    batch.image_grids = [[crops.pictures[0].grid]]
    batch.image_kept = kept_per_picture(kept, [[c] for c in counts])
    ours = prompt_positions(batch, model.runtime)[0]
    _, ref_kept, ref_positions = hf_pruned_generate(qwen, get_method("received"), {}, picture, PROMPT, 1, 0.75)
    np.testing.assert_array_equal(kept[0, : counts[0]], ref_kept.numpy())
    np.testing.assert_array_equal(ours, ref_positions[:, 0].T.numpy())


def test_uncompiled_size_is_resized_to_the_nearest_grid(qwen, compiled):
    model = compiled(0.0)
    picture = _picture(300, 200, 5)  # the processor's grid 22x14 is not compiled; nearest by aspect: 20x12
    got = model.generate([PROMPT], [picture], max_new_tokens=NEW)
    info = got.pictures[0]
    assert info["processor_grid"] == (22, 14) and info["grid"] == (20, 12) and info["resized_to"] == (280, 168)
    resized = picture.resize((168, 280), Image.BICUBIC)
    expected = hf_generate(qwen.model, qwen.processor, resized, PROMPT, NEW)
    assert got.token_ids[0] == _trim(expected, set(model.runtime["eos_token_ids"]))


def test_two_pictures_of_two_grids_in_one_prompt_equal_hf_generate(qwen, compiled):
    """Each picture its own grid's graph and its own M-RoPE block (the second one after the first's
    max(h, w) / 2 advance), beside a text-only prompt in the batch."""
    model = compiled(0.0)
    eos = set(model.runtime["eos_token_ids"])
    pictures = [_picture(*SIZES[0], 21), _picture(*SIZES[1], 22)]
    got = model.generate([PROMPT, PROMPT], [pictures, None], max_new_tokens=NEW)
    assert got.picture_tokens[0] == [h * w // 28**2 for h, w in SIZES[:2]] and got.picture_tokens[1] == []
    assert got.token_ids[0] == _trim(hf_generate(qwen.model, qwen.processor, pictures, PROMPT, NEW), eos)
    assert got.token_ids[1] == _trim(hf_generate(qwen.model, qwen.processor, None, PROMPT, NEW), eos)


def test_batch_of_two_grids_equals_each_alone(compiled):
    model = compiled(0.75)
    pictures = [_picture(224, 224, 7), _picture(168, 280, 8)]
    prompts = [PROMPT, "Describe the colours you can see in this image, please."]
    both = model.generate(prompts, pictures, max_new_tokens=NEW)
    for row in range(2):
        alone = model.generate([prompts[row]], [pictures[row]], max_new_tokens=NEW)
        assert both.token_ids[row] == alone.token_ids[0]
        count = alone.image_tokens[0]
        np.testing.assert_array_equal(both.kept_indices[row, :count], alone.kept_indices[0, :count])
    assert both.image_tokens == [16, 15]


@pytest.mark.parametrize("llm_method", ["fastv", "pdrop"])
def test_in_llm_pruning_with_mrope_equals_eager_reference(qwen, tmp_path, llm_method):
    """FastV (original 3-D positions) / PyramidDrop (renumbered) inside the decoder, on a real picture's
    prompt: the kept image tokens and the greedy tokens equal the eager reference run on Hugging Face's
    own layers, fed the image features and the ``get_rope_index`` positions Hugging Face computes."""
    from tpc.methods.in_llm_reference import reference_generate
    from tpc.models.qwen_reference import hf_inputs
    from tpc.runtimes.decoders import llm_plan_for

    out = tmp_path / llm_method
    settings = CompileSettings(model="qwen2.5-vl-tiny", output=out, method=llm_method, target="ort")
    settings.ratio = 0.5 if llm_method == "fastv" else None
    compile_model(settings)
    model = CompiledModel.load(out)
    picture = _picture(168, 280, 21)
    got = model.generate([PROMPT], [picture], max_new_tokens=NEW)

    inputs = hf_inputs(qwen.processor, picture, PROMPT)
    ids = inputs["input_ids"]
    with torch.no_grad():
        hf = qwen.model.model
        positions, _ = hf.get_rope_index(ids, inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"])
        features = hf.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output[0]
        embeds = qwen.model.get_input_embeddings()(ids)
        is_image = ids[0] == qwen.text.image_token_id
        embeds[0, is_image] = features
    plan, _ = llm_plan_for(model.runtime, int(is_image.sum()))
    start = torch.tensor([int(torch.nonzero(is_image)[0])])
    ref = reference_generate(
        qwen.model, embeds, torch.ones_like(ids), start, plan, NEW, positions=positions.permute(1, 2, 0)
    )
    assert got.token_ids[0] == _trim(ref.tokens[0], set(model.runtime["eos_token_ids"]))
    kept = torch.arange(plan.image_tokens)
    for stage_kept in ref.kept:
        kept = kept[stage_kept[0]]
    np.testing.assert_array_equal(got.llm_kept_indices[0], kept.numpy())


@pytest.mark.parametrize("name", ["visionzip", "divprune"])
def test_other_methods_after_the_merger_equal_eager_reference(qwen, tmp_path, name):
    """VisionZip (dominant by the merged tokens' received attention, contextual merged by their keys) and
    DivPrune (diversity of the projected tokens) at one grid: compile verifies, and generation equals the
    method applied eagerly on Hugging Face's model."""
    import json

    from tpc.methods import get_method

    out = tmp_path / name
    compile_model(
        CompileSettings(
            model="qwen2.5-vl-tiny", output=out, method=name, ratio=0.75, target="ort", image_sizes=[(168, 280)]
        )
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(r["indices"] == "exact" for r in manifest["verification"]["vision"])
    model = CompiledModel.load(out)
    picture = _picture(168, 280, 31)
    got = model.generate([PROMPT], [picture], max_new_tokens=NEW)
    method = get_method(name)
    params = manifest["method"]["parameters"]
    tokens, kept, _ = hf_pruned_generate(qwen, method, params, picture, PROMPT, NEW, 0.75)
    np.testing.assert_array_equal(got.kept_indices[0, : got.image_tokens[0]], kept.numpy())
    assert got.token_ids[0] == _trim(tokens, set(model.runtime["eos_token_ids"]))


def test_refusals_are_one_line_usage_errors(tmp_path):
    from tpc.errors import UsageError

    cases = [
        (dict(method="fastervlm", ratio=0.5), "fastervlm"),
        (dict(method="pool", ratio=0.75), "methods that apply: received"),
        (dict(ratio=0.5, buckets=[8, 16]), "--buckets"),
        (dict(ratio=0.5, image_sizes=[(100, 100)], min_pixels=90000, max_pixels=80000), "--min-pixels"),
    ]
    for kwargs, text in cases:
        out = tmp_path / "refused"
        with pytest.raises(UsageError, match=text):
            compile_model(CompileSettings(model="qwen2.5-vl-tiny", output=out, target="ort", **kwargs))
        assert not out.exists() and not list(tmp_path.glob(".refused*"))


@pytest.mark.parametrize("name", ["dart", "cdpruner"])
def test_selection_at_the_llm_input_with_mrope_equals_eager_reference(qwen, tmp_path, name):
    """DART / CDPruner on the assembled input of an unpruned picture: the kept span rows and the greedy tokens
    equal the naive reference run on Hugging Face's own prompt embeddings, kept rows at their original 3-D
    positions."""
    import json

    from tpc.models.qwen_reference import hf_input_selected_generate

    out = tmp_path / name
    compile_model(
        CompileSettings(
            model="qwen2.5-vl-tiny", output=out, method=name, ratio=0.75, target="ort", image_sizes=[(168, 280)]
        )
    )
    params = json.loads((out / "manifest.json").read_text())["input_selection"]["parameters"]
    model = CompiledModel.load(out)
    picture = _picture(168, 280, 41)
    got = model.generate([PROMPT], [picture], max_new_tokens=NEW)
    tokens, kept = hf_input_selected_generate(qwen, name, params, picture, PROMPT, NEW, 0.75)
    np.testing.assert_array_equal(got.input_kept_indices[0], kept.numpy())
    assert got.token_ids[0] == _trim(tokens, set(model.runtime["eos_token_ids"]))
