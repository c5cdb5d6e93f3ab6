"""LLaVA-OneVision: SigLIP crops without [CLS] through one vision graph, Hugging Face's packing (with the
``anyres_max_9`` downsampling) when unpruned, METHODS.md's per-crop rule when pruned; token for token
against Hugging Face's ``generate``; the processor without torchvision; the CLI end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from tests.conftest import ASSETS, run_cli
from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.methods import METHODS
from tpc.models import load_model
from tpc.models.anyres import onevision_token_count
from tpc.models.families import make_adapter
from tpc.models.onevision_processor import OnevisionProcessor
from tpc.models.presets import PRESETS, build_preset
from tpc.runtimes.compiled_model import CompiledModel
from tpc.runtimes.light_processor import LightProcessor, UnsupportedProcessor

PROMPTS = ["What is on the left?", "Describe the picture."]


def _picture(height: int, width: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# grids 2x1, 1x2, 2x2 and 4x4; the last holds ~1.6x nine crops' worth of tokens: anyres_max_9 downsamples it
TALL, WIDE, SQUARE, LARGE = _picture(700, 300, 1), _picture(280, 650, 2), _picture(500, 480, 3), _picture(1500, 1400, 4)


@pytest.fixture(scope="module")
def onevision():
    return build_preset(PRESETS["llava-onevision-tiny"])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("onevision")
    built = {}
    configs = {
        # unpruned, with compile's verification (every grid's layout against Hugging Face's packing)
        "r0": dict(ratio=0.0),
        # the family's default method; the tests below check its selection against the references
        "default": dict(ratio=0.889, verify=False),
    }

    def get(name: str) -> Path:
        if name not in built:
            settings = CompileSettings(model="llava-onevision-tiny", output=root / name, target="ort", **configs[name])
            built[name] = compile_model(settings)
        return built[name]

    return get


def _hf_generate(model, processor, prompt, image, new_tokens):
    """Hugging Face on one picture, or on a list of pictures passed as ONE sample's images (a nested list: the
    processor's multi-image mode, one square crop per picture)."""
    images = image if isinstance(image, list) else [image]
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": prompt}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(images=[images], text=[text], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=new_tokens, do_sample=False, pad_token_id=model.config.text_config.pad_token_id
        )
    return inputs["input_ids"][0].tolist(), out[0, inputs["input_ids"].shape[1] :].tolist()


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


def _trim(tokens, eos):
    out = []
    for t in tokens:
        out.append(t)
        if t in eos:
            break
    return out


def test_unpruned_equals_hugging_face_for_tall_wide_square_and_downsampled_pictures(artifacts, onevision):
    model, processor = onevision
    art = artifacts("r0")
    manifest = json.loads((art / "manifest.json").read_text())
    layout = manifest["verification"]["layout"]
    assert len(layout) == 36 and all(r["passed"] for r in layout)  # every grid of the 36 pinpoints
    assert manifest["method"]["name"] == "received" and manifest["keep"] == 729
    compiled = CompiledModel.load(art)
    eos = set(compiled.runtime["eos_token_ids"])
    images = [TALL, WIDE, SQUARE, LARGE]
    result = compiled.generate([PROMPTS[0]] * 4, images, max_new_tokens=8)
    for row, image in enumerate(images):
        ids, expected = _hf_generate(model, processor, PROMPTS[0], image, 8)
        assert result.image_tokens[row] == ids.count(compiled.runtime["image_token_id"])  # HF's placeholders
        assert result.token_ids[row] == _trim(expected, eos)
    assert result.image_tokens[3] == 7281  # 729 + the 4x4 grid downsampled to 81 x 80 + 81 newlines
    assert max(result.image_tokens) <= compiled.runtime["image_tokens_max"] <= compiled.runtime["max_context"]


def test_two_pictures_in_one_prompt_use_the_multi_image_mode_of_hugging_face(artifacts, onevision):
    """Several pictures in a prompt: one square crop each (padded with the mean colour, no anyres) and a
    newline after its 729 rows, as transformers does; beside a one-picture prompt (anyres) in the batch."""
    model, processor = onevision
    compiled = CompiledModel.load(artifacts("r0"))
    eos = set(compiled.runtime["eos_token_ids"])
    result = compiled.generate(PROMPTS, [[TALL, WIDE], SQUARE], max_new_tokens=6)
    assert result.picture_tokens[0] == [730, 730] and result.crops_per_image[:2] == [1, 1]
    ids, expected = _hf_generate(model, processor, PROMPTS[0], [TALL, WIDE], 6)
    assert ids.count(compiled.runtime["image_token_id"]) == 1460
    assert result.token_ids[0] == _trim(expected, eos)
    assert result.token_ids[1] == _trim(_hf_generate(model, processor, PROMPTS[1], SQUARE, 6)[1], eos)
    pruned = CompiledModel.load(artifacts("default"))
    keep = pruned.runtime["keep"]
    got = pruned.generate([PROMPTS[0]], [[TALL, WIDE]], max_new_tokens=2)
    assert got.picture_tokens == [[keep, keep]]  # each picture's one crop keeps the budget


def test_batch_of_two_pictures_with_different_grids_equals_hugging_face_and_single_runs(artifacts, onevision):
    model, processor = onevision
    compiled = CompiledModel.load(artifacts("r0"))
    eos = set(compiled.runtime["eos_token_ids"])
    both = compiled.generate(PROMPTS, [TALL, SQUARE], max_new_tokens=6)
    assert both.image_tokens[0] != both.image_tokens[1]
    for row, image in enumerate([TALL, SQUARE]):
        single = compiled.generate([PROMPTS[row]], [image], max_new_tokens=6)
        assert single.token_ids[0] == both.token_ids[row]
        assert both.token_ids[row] == _trim(_hf_generate(model, processor, PROMPTS[row], image, 6)[1], eos)


def test_pruned_keeps_per_crop_tokens_in_the_order_of_methods_md(artifacts, onevision):
    model, processor = onevision
    compiled = CompiledModel.load(artifacts("default"))
    manifest = compiled.artifact.manifest
    assert manifest["method"]["name"] == "received"  # the family's default: no [CLS] row to score with
    keep = compiled.runtime["keep"]
    assert keep == 81  # ceil(729 * 0.111)
    adapter = make_adapter(model, processor)
    method = METHODS.get("received")
    eos = set(compiled.runtime["eos_token_ids"])
    images = [TALL, SQUARE]
    result = compiled.generate(PROMPTS, images, max_new_tokens=8)
    for row, (prompt, image) in enumerate(zip(PROMPTS, images, strict=True)):
        rows, labels = adapter.reference_rows(image, method, keep, {})
        crops = 3 if image is TALL else 5
        assert result.image_tokens[row] == len(labels) == crops * keep  # every crop's own top-k, no newline
        assert np.array_equal(result.kept_indices[row, : len(labels)], labels.numpy())
        ids = compiled.encoder.tokens([prompt], [len(labels)]).input_ids
        assert result.token_ids[row] == _trim(_hf_generate_from_features(model, ids, rows, 8), eos)


def test_compile_visionzip_and_run_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "vz"
    code, _, err = run_cli(
        ["compile", "llava-onevision-tiny", "--method", "visionzip", "--ratio", "0.889", "-o", str(out)], capsys
    )
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    verification = manifest["verification"]
    assert verification["passed"] and all(v["indices"] == "exact" for v in verification["vision"])
    assert len(verification["layout"]) == 36 and all(
        r["passed"] and r["order"] == "exact" for r in verification["layout"]
    )
    assert manifest["method"]["parameters"] == {"dominant": 0, "contextual": 0, "cls_token": False}
    assert any(p["name"] == "expose_received_attention" and p["modified"] for p in manifest["passes"])
    code, stdout, err = run_cli(
        ["run", str(out), "--image", str(ASSETS / "demo.png"), "--prompt", "What is in the picture?", "--json"],
        capsys,
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert report["visual_tokens"]["crops"] == 3  # 480 x 360: the 1x2 grid of 384 px crops and the base crop
    assert report["visual_tokens"]["after"] == 3 * 81 == len(report["kept_indices"])
    assert len(report["token_ids"]) >= 1


_LIGHT_RUN = """
import json, sys
from tpc.runtimes.compiled_model import CompiledModel
from tpc.runtimes.light_processor import LightProcessor

model = CompiledModel.load(sys.argv[1])
result = model.generate(["What is in the picture?"], [sys.argv[2]], max_new_tokens=4)
heavy = [m for m in ("torch", "transformers", "tpc.compiler") if m in sys.modules]
print(json.dumps({"heavy": heavy, "light": isinstance(model.encoder.processor, LightProcessor),
                  "tokens": result.token_ids[0], "image_tokens": result.image_tokens}))
"""


def test_saved_processor_runs_without_transformers_and_falls_back_to_its_parts(artifacts, monkeypatch):
    art = artifacts("default")
    done = subprocess.run(
        [sys.executable, "-c", _LIGHT_RUN, str(art), str(ASSETS / "demo.png")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    light = json.loads(done.stdout.strip().splitlines()[-1])
    assert light["heavy"] == [] and light["light"]
    # the light loader refusing the files: transformers' AutoProcessor fails too (no torchvision for the video
    # processor), so the processor is built from transformers' parts, with the same tokens
    with pytest.raises(OSError, match="video processor"):
        from transformers import AutoProcessor

        AutoProcessor.from_pretrained(str(art / "processor"))

    def refuse(cls, directory):
        raise UnsupportedProcessor("test: pretend the light loader does not handle these files")

    monkeypatch.setattr(LightProcessor, "from_dir", classmethod(refuse))
    model = CompiledModel.load(art)
    assert isinstance(model.encoder.processor, OnevisionProcessor)
    result = model.generate(["What is in the picture?"], [str(ASSETS / "demo.png")], max_new_tokens=4)
    assert result.token_ids[0] == light["tokens"] and result.image_tokens == light["image_tokens"]


@pytest.mark.parametrize("layout", ["save_pretrained", "hub"])
def test_local_checkpoint_builds_its_processor_from_parts(onevision, tmp_path, layout):
    model, processor = onevision
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    processor.save_pretrained(ckpt)
    if layout == "hub":  # the llava-hf repositories: preprocessor_config.json and chat_template.json
        config = json.loads((ckpt / "processor_config.json").read_text())
        image = config.pop("image_processor")
        (ckpt / "preprocessor_config.json").write_text(
            json.dumps(dict(image, processor_class=config["processor_class"]))
        )
        (ckpt / "processor_config.json").write_text(json.dumps(config))
        template = (ckpt / "chat_template.jinja").read_text()
        (ckpt / "chat_template.jinja").unlink()
        (ckpt / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    loaded = load_model(str(ckpt))
    assert isinstance(loaded.processor, OnevisionProcessor)
    assert type(loaded.processor.image_processor).__name__ == "LlavaOnevisionImageProcessorPil"
    assert loaded.processor.chat_template == processor.chat_template
    adapter = make_adapter(loaded.model, loaded.processor)
    assert adapter.vision == make_adapter(model, processor).vision
    for image in (TALL, LARGE):
        size = (image.size[1], image.size[0])
        assert loaded.processor.image_token_count(size) == processor.image_token_count(size)
    files = tmp_path / "processor"  # the processor's files alone (as an artifact holds them) load without transformers
    files.mkdir()
    for path in ckpt.iterdir():
        if path.name != "config.json" and not path.name.startswith(("model", "generation")):
            (files / path.name).write_bytes(path.read_bytes())
    light = LightProcessor.from_dir(files)
    assert light.image_processor.image_token_count((1500, 1400)) == 7281
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    assert light.apply_chat_template(conversation, add_generation_prompt=True) == processor.apply_chat_template(
        conversation, add_generation_prompt=True
    )


def test_presets_have_the_documented_geometry(onevision):
    model, processor = onevision
    adapter = make_adapter(model, processor)
    v = adapter.vision
    assert (v.num_patches, v.image_size, v.num_layers, v.feature_layer, v.has_cls) == (729, 384, 3, 2, False)
    assert adapter.default_method == "received" and adapter.max_crops == 9 and len(adapter.pinpoints) == 36
    assert adapter.image_layout()["crops_max"] == 37 and adapter.image_layout()["anyres_max"] == 9
    assert PRESETS["llava-onevision"].hub_id == "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
    bench = PRESETS["llava-onevision-bench"]
    vision, text = bench.vision, bench.text
    assert (vision["num_hidden_layers"], vision["hidden_size"], vision["intermediate_size"]) == (26, 1152, 4304)
    assert (vision["image_size"], vision["patch_size"], vision["num_attention_heads"]) == (384, 14, 16)
    assert (
        text["hidden_size"],
        text["num_hidden_layers"],
        text["num_attention_heads"],
        text["num_key_value_heads"],
    ) == (
        896,
        24,
        14,
        2,
    )
    width, inner = text["hidden_size"], text["intermediate_size"]
    per_layer = 2 * width**2 + 2 * width * (width // 14 * 2) + 3 * width * inner  # q, o; k, v (2 kv heads); MLP
    params = text["num_hidden_layers"] * per_layer + text["vocab_size"] * width  # tied embeddings
    assert 0.45e9 < params < 0.55e9


def test_max_image_tokens_bounds_every_picture(onevision):
    adapter = make_adapter(*onevision)
    most = adapter.max_image_tokens(729)
    rng = np.random.default_rng(3)
    sizes = [tuple(int(v) for v in s) for s in rng.integers(1, 4000, size=(400, 2))]
    sizes += [(h - 29, w - 47) for h, w in adapter.pinpoints] + [(2304, 2304), (1152, 1536), (10, 4000)]
    counts = [onevision_token_count(s, adapter.pinpoints, 384, 27, 9) for s in sizes]
    assert max(counts) <= most <= adapter.text.max_context
    assert most - max(counts) < 729  # a tight bound
    assert adapter.max_image_tokens(81) == 37 * 81


def test_models_and_presets_list_the_family(capsys):
    code, out, _ = run_cli(["models"], capsys)
    assert code == 0
    block = out[out.index("llava_onevision") :]
    assert "LlavaOnevisionForConditionalGeneration" in block and "without [CLS]" in block
    assert "llava-onevision-tiny" in block and "received" in block and "fastervlm" in block.split("not applicable")[1]
    code, out, _ = run_cli(["presets"], capsys)
    assert code == 0
    for name in ("llava-onevision", "llava-onevision-tiny", "llava-onevision-bench"):
        assert name in out


def test_light_processor_crops_several_pictures_as_transformers(artifacts, onevision):
    """A prompt's several pictures: one square crop each (mean-colour padding, centred), pixel for pixel as
    transformers' processor computes them for a nested list; the runtime's fallback on transformers too."""
    from tpc.runtimes.image_layout import _base_crops

    _, processor = onevision
    light = LightProcessor.from_dir(artifacts("r0") / "processor")
    pictures = [TALL, WIDE, SQUARE, Image.new("RGB", (40, 40), (10, 200, 30))]
    want = processor.image_processor([pictures], do_pad=False, return_tensors=None)
    got, sizes = light.image_processor.preprocess_base(pictures)
    assert sizes == [(int(h), int(w)) for h, w in want["image_sizes"]]
    for ours, theirs in zip(got, want["pixel_values"], strict=True):
        np.testing.assert_array_equal(ours, np.asarray(theirs, dtype=np.float32))
    fallback, _ = _base_crops(processor.image_processor, pictures)
    for ours, theirs in zip(fallback, got, strict=True):
        np.testing.assert_array_equal(ours, theirs)
