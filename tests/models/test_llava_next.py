"""LLaVA-NeXT: anyres crops through one vision graph, Hugging Face's packing when unpruned, the
per-crop rule of METHODS.md when pruned; token for token against Hugging Face."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from tests.conftest import run_cli
from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.methods import METHODS
from tpc.models.families import make_adapter
from tpc.models.presets import PRESETS, build_preset
from tpc.runtimes.compiled_model import CompiledModel

PROMPTS = ["What is on the left?", "Describe the picture."]


def _picture(height: int, width: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


TALL, WIDE, SQUARE = _picture(700, 300, 1), _picture(280, 650, 2), _picture(500, 480, 3)


@pytest.fixture(scope="module")
def next_model():
    return build_preset(PRESETS["llava-next-tiny"])


@pytest.fixture(scope="module")
def next_artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("next")
    built = {}

    def get(ratio: float):
        if ratio not in built:
            settings = CompileSettings(model="llava-next-tiny", output=root / f"r{ratio}", ratio=ratio, target="ort")
            built[ratio] = compile_model(settings)
        return built[ratio]

    return get


def _hf_generate_from_features(model, input_ids, features, new_tokens):
    """Hugging Face's model fed the given image rows (the vision tower skipped)."""
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.ones_like(torch.from_numpy(input_ids)),
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=[features])},
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=model.config.text_config.pad_token_id,
        )
    return out[0, input_ids.shape[1] :].tolist()


def _hf_generate(model, processor, prompt, image, new_tokens):
    """Hugging Face's processor and generate on ``image`` (a list: several pictures in the one prompt)."""
    images = image if isinstance(image, list) else [image]
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": prompt}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(images=images, text=[text], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=new_tokens, do_sample=False, pad_token_id=model.config.text_config.pad_token_id
        )
    return inputs["input_ids"][0].tolist(), out[0, inputs["input_ids"].shape[1] :].tolist()


def _trim(tokens, eos):
    out = []
    for t in tokens:
        out.append(t)
        if t in eos:
            break
    return out


def test_unpruned_equals_hugging_face_for_every_grid_shape(next_artifacts, next_model):
    model, processor = next_model
    compiled = CompiledModel.load(next_artifacts(0.0))
    eos = set(compiled.runtime["eos_token_ids"])
    images = [TALL, WIDE, SQUARE]
    result = compiled.generate([PROMPTS[0]] * 3, images, max_new_tokens=10)
    for row, image in enumerate(images):
        ids, expected = _hf_generate(model, processor, PROMPTS[0], image, 10)
        assert result.image_tokens[row] == ids.count(compiled.runtime["image_token_id"])  # HF's placeholder count
        assert result.token_ids[row] == _trim(expected, eos)


def test_two_pictures_in_one_prompt_equal_hugging_face(next_artifacts, next_model):
    """Each picture its own anyres crops and packing, in prompt order; batched beside a one-picture prompt."""
    model, processor = next_model
    compiled = CompiledModel.load(next_artifacts(0.0))
    ids, expected = _hf_generate(model, processor, PROMPTS[1], [TALL, WIDE], 8)
    result = compiled.generate(PROMPTS[::-1], [[TALL, WIDE], SQUARE], max_new_tokens=8)
    assert sum(result.picture_tokens[0]) == ids.count(compiled.runtime["image_token_id"])
    assert len(result.crops_per_image) == 3 and result.picture_tokens[1] == [result.image_tokens[1]]
    assert result.token_ids[0] == _trim(expected, set(compiled.runtime["eos_token_ids"]))
    single = compiled.generate([PROMPTS[0]], [SQUARE], max_new_tokens=8)
    assert result.token_ids[1] == single.token_ids[0]


def test_batch_of_two_pictures_with_different_grids_equals_single_runs(next_artifacts):
    compiled = CompiledModel.load(next_artifacts(0.0))
    both = compiled.generate(PROMPTS, [TALL, WIDE], max_new_tokens=6)
    assert both.image_tokens[0] != both.image_tokens[1]
    for row, image in enumerate([TALL, WIDE]):
        single = compiled.generate([PROMPTS[row]], [image], max_new_tokens=6)
        assert single.token_ids[0] == both.token_ids[row]


def test_pruned_keeps_per_crop_tokens_in_the_order_of_methods_md(next_artifacts, next_model):
    model, processor = next_model
    compiled = CompiledModel.load(next_artifacts(0.889))
    keep = compiled.runtime["keep"]
    assert keep == 64
    adapter = make_adapter(model, processor)
    method = METHODS.get("fastervlm")
    result = compiled.generate(PROMPTS, [TALL, SQUARE], max_new_tokens=8)
    eos = set(compiled.runtime["eos_token_ids"])
    for row, (prompt, image) in enumerate(zip(PROMPTS, [TALL, SQUARE], strict=True)):
        rows, labels = adapter.reference_rows(image, method, keep, {})
        assert result.image_tokens[row] == len(labels) == keep * (len(labels) // keep)
        assert np.array_equal(result.kept_indices[row, : len(labels)], labels.numpy())
        # the reference rows fed to Hugging Face's own model give the same tokens
        ids = compiled.encoder.tokens([prompt], [len(labels)]).input_ids
        expected = _hf_generate_from_features(model, ids, rows, 8)
        assert result.token_ids[row] == _trim(expected, eos)


def test_tiny_and_odd_pictures_run(next_artifacts):
    compiled = CompiledModel.load(next_artifacts(0.889))
    for image in (_picture(12, 9, 4), _picture(40, 1000, 5), Image.new("L", (333, 335))):
        result = compiled.generate(["Hi"], [image], max_new_tokens=2)
        assert result.image_tokens[0] % compiled.runtime["keep"] == 0


def test_models_lists_the_families(capsys):
    code, out, _ = run_cli(["models"], capsys)
    assert code == 0
    assert "llava_next" in out and "llava-next-tiny" in out and "LlavaNextForConditionalGeneration" in out


def test_tensorrt_plan_covers_the_largest_grid_times_the_batch(tmp_path, capsys):
    import json

    out = tmp_path / "trt"
    code, _, err = run_cli(
        [
            "compile",
            "llava-next-tiny",
            "--ratio",
            "0.889",
            "--target",
            "trt",
            "--no-build",
            "--max-batch",
            "2",
            "--no-verify",
            "-o",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    engines = manifest["trt_plan"]["engines"]
    vision = engines["vision"]["profiles"][0]["shapes"]["pixel_values"]
    assert vision["max"] == [2 * 5, 3, 336, 336]  # 2 pictures x (base + 2x2 grid)
    embed = engines["embed"]["profiles"][0]["shapes"]["image_features"]
    assert embed["max"][:2] == [2, 5 * 64]
    assert manifest["runtime"]["image_layout"]["crops_max"] == 5
    code, out_text, err = run_cli(["check", str(out)], capsys)
    assert code == 0, err


def test_unsupported_family_lists_the_supported(tmp_path, capsys):
    import json

    ckpt = tmp_path / "idefics"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "idefics3"}))
    code, _, err = run_cli(["compile", str(ckpt), "-o", str(tmp_path / "out")], capsys)
    assert code == 3
    assert "model type 'idefics3' is not supported; supported families: llava (LLaVA-1.5), llava_next" in err
    assert "qwen2_5_vl (Qwen2.5-VL)" in err
