"""Qwen2-VL / Qwen2.5-VL's processor without torchvision (tpc.models.qwen_processor) and without transformers
(tpc.models.light_image_processors.QwenVLImageProcessor through tpc.runtimes.light_processor).

The references are transformers' own classes: ``Qwen2VLImageProcessorPil`` for pixels and grids, and
``Qwen2_5_VLProcessor`` / ``Qwen2VLProcessor`` for token ids, built here without their video processor (a
subclass whose ``__init__`` does not take one: transformers' processor then has no video part to load).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tpc.models.light_image_processors import QwenVLImageProcessor, force_size
from tpc.models.qwen_processor import QwenImageProcessor, QwenVLProcessor, load_parts
from tpc.models.tiny_processor import (
    QWEN2_5_VL_CHAT_TEMPLATE,
    QWEN_EOS_ID,
    QWEN_IMAGE_TOKEN_ID,
    QWEN_PAD_ID,
    QWEN_SPECIAL_TOKENS,
    QWEN_VIDEO_TOKEN_ID,
    QWEN_VISION_END_ID,
    QWEN_VISION_START_ID,
    build_qwen2_5_vl_processor,
    build_qwen2_vl_processor,
)
from tpc.runtimes.light_processor import LightProcessor, UnsupportedProcessor, load_processor
from tpc.runtimes.prompting import PromptEncoder

MIN_PIXELS, MAX_PIXELS = 56 * 56, 28 * 28 * 64  # at most 256 patches (64 image tokens) per image: fast
PROMPTS = ["What is in the picture?", "ünïcödé, 日本語 😀 and <|im_start|> as text", "x", "two\nlines  and\ttabs"]


def _no_video(kind):
    """transformers' processor class ``kind`` without a video processor (its __init__ has no such argument)."""

    class NoVideo(kind):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template)

    return NoVideo


def reference(processor: QwenVLProcessor):
    """transformers' ``Qwen2_5_VLProcessor`` (or ``Qwen2VLProcessor``) over the same parts."""
    import transformers

    kind = _no_video(getattr(transformers, processor.processor_class))
    return kind(processor.image_processor.processor, processor.tokenizer, chat_template=processor.chat_template)


@pytest.fixture(scope="module")
def qwen() -> QwenVLProcessor:
    return build_qwen2_5_vl_processor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)


@pytest.fixture(scope="module")
def qwen_dir(qwen, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("qwen") / "processor"
    qwen.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def light(qwen_dir) -> LightProcessor:
    return LightProcessor.from_dir(qwen_dir)


def _images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(7)
    noise = (rng.random((700, 900, 3)) * 255).astype(np.uint8)
    rgba = np.dstack([noise[:301, :517], (rng.random((301, 517)) * 255).astype(np.uint8)])
    palette = Image.fromarray(noise[:90, :130]).convert("P")
    palette.info["transparency"] = 0
    return {
        "odd": Image.fromarray(noise[:301, :517]),
        "tall": Image.fromarray(noise[:517, :141]),
        "wide": Image.fromarray(noise[:60, :900]),
        "exact-grid": Image.fromarray(noise[:112, :168]),
        "below-min-pixels": Image.fromarray(noise[:5, :7]),
        "one-pixel": Image.new("RGB", (1, 1), (200, 10, 30)),
        "very-wide": Image.fromarray(noise[:3, :517]),
        "above-max-pixels": Image.fromarray(noise),
        "grayscale": Image.fromarray(noise[:99, :77, 0]),
        "rgba": Image.fromarray(rgba, "RGBA"),
        "palette-transparency": palette,
        "cmyk": Image.fromarray(noise[:150, :201]).convert("CMYK"),
    }


# --------------------------------------------------------------------------- tiny processor and tokenizer


def test_tiny_tokenizer_has_qwen_special_tokens(qwen):
    tokenizer = qwen.tokenizer
    assert QWEN_SPECIAL_TOKENS == (
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    )
    assert [tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS] == list(range(7))
    assert (QWEN_PAD_ID, QWEN_EOS_ID, QWEN_VISION_START_ID, QWEN_VISION_END_ID) == (0, 2, 3, 4)
    assert (QWEN_IMAGE_TOKEN_ID, QWEN_VIDEO_TOKEN_ID) == (5, 6)
    assert len(tokenizer) == 263 < 300
    assert tokenizer.pad_token_id == QWEN_PAD_ID and tokenizer.eos_token_id == QWEN_EOS_ID
    assert tokenizer.bos_token is None and tokenizer.padding_side == "left"
    assert (qwen.image_token, qwen.image_token_id, qwen.video_token_id) == ("<|image_pad|>", 5, 6)
    ids = tokenizer("<|vision_start|><|image_pad|><|vision_end|>hi").input_ids
    assert ids[:3] == [3, 5, 4] and len(ids) == 5  # no BOS; specials are single tokens
    assert qwen.decode(ids, skip_special_tokens=True) == "hi"


@pytest.mark.parametrize("kind", ["Qwen2_5_VLProcessor", "Qwen2VLProcessor"])
def test_chat_template_renders_like_transformers(qwen, kind):
    processor = qwen if kind == "Qwen2_5_VLProcessor" else build_qwen2_vl_processor(14, 2, MIN_PIXELS, MAX_PIXELS)
    assert processor.processor_class == kind and processor.chat_template == QWEN2_5_VL_CHAT_TEMPLATE
    hf = reference(processor)
    conversations = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}],
        [{"role": "user", "content": [{"type": "text", "text": "no image"}]}],
        [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "image"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "b"}]},
            {"role": "user", "content": "plain string content"},
        ],
    ]
    for conversation in conversations:
        for generation in (True, False):
            want = hf.apply_chat_template(conversation, add_generation_prompt=generation, tokenize=False)
            assert processor.apply_chat_template(conversation, add_generation_prompt=generation) == want
    text = processor.apply_chat_template(conversations[0], add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What?<|im_end|>\n<|im_start|>assistant\n"
    )


# --------------------------------------------------------------------------- the light image processor


@pytest.mark.parametrize("name", list(_images()))
def test_light_pixels_and_grids_match_transformers(qwen, light, name):
    hf = qwen.image_processor.processor  # Qwen2VLImageProcessorPil
    image = _images()[name]
    want = hf([image], return_tensors="np")
    got = light.image_processor([image])
    assert got["pixel_values"].dtype == np.float32 and got["image_grid_thw"].dtype == np.int64
    assert got["pixel_values"].shape == want["pixel_values"].shape
    assert got["pixel_values"].shape[1] == 3 * 2 * 14 * 14
    np.testing.assert_array_equal(got["pixel_values"], want["pixel_values"])
    np.testing.assert_array_equal(got["image_grid_thw"], want["image_grid_thw"])
    size = (image.height, image.width)
    _, grid_h, grid_w = (int(v) for v in want["image_grid_thw"][0])
    patches = hf.get_number_of_image_patches(*size)
    for processor in (light.image_processor, qwen.image_processor):
        assert processor.grid_of(size) == (grid_h, grid_w)
        assert processor.image_token_count(size) == grid_h * grid_w // 4 == patches // 4
    assert MIN_PIXELS <= grid_h * grid_w * 14 * 14 <= MAX_PIXELS


def test_light_batch_matches_transformers(qwen, light):
    images = list(_images().values())
    want = qwen.image_processor.processor(images, return_tensors="np")
    got = light.image_processor(images)
    np.testing.assert_array_equal(got["pixel_values"], want["pixel_values"])
    np.testing.assert_array_equal(got["image_grid_thw"], want["image_grid_thw"])
    pieces, grids = light.image_processor.preprocess_grid(images)
    assert [tuple(g) for g in want["image_grid_thw"][:, 1:].tolist()] == grids
    np.testing.assert_array_equal(np.concatenate(pieces), want["pixel_values"])
    assert [len(p) for p in pieces] == [h * w for h, w in grids]


def test_light_attributes(light):
    processor = light.image_processor
    assert isinstance(processor, QwenVLImageProcessor)
    assert (processor.patch_size, processor.merge_size, processor.temporal_patch_size) == (14, 2, 2)
    assert (processor.min_pixels, processor.max_pixels) == (MIN_PIXELS, MAX_PIXELS)


def test_preprocess_grid_forces_sizes(qwen, light):
    images = _images()
    batch = [images["odd"], images["rgba"], images["below-min-pixels"], images["tall"]]
    sizes = [(112, 168), (224, 224), None, (56, 56)]
    got, grids = light.image_processor.preprocess_grid(batch, sizes)
    want, want_grids = qwen.image_processor.preprocess_grid(batch, sizes)  # through transformers
    assert grids == want_grids == [(8, 12), (16, 16), light.image_processor.grid_of((5, 7)), (4, 4)]
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype == np.float32
        np.testing.assert_array_equal(g, w)
    # forcing is resizing first: the same as transformers on the resized picture
    resized = force_size(images["odd"], (112, 168))
    assert resized.size == (168, 112) and resized.mode == "RGB"
    np.testing.assert_array_equal(
        got[0], qwen.image_processor.processor([resized], return_tensors="np")["pixel_values"]
    )
    for processor in (light.image_processor, qwen.image_processor):
        with pytest.raises(ValueError, match="not one the processor keeps"):
            processor.preprocess_grid([images["odd"]], [(100, 100)])  # not multiples of 28
        with pytest.raises(ValueError, match="not one the processor keeps"):
            processor.preprocess_grid([images["odd"]], [(280, 280)])  # above max_pixels
        with pytest.raises(ValueError, match="1 images but 2 sizes"):
            processor.preprocess_grid([images["odd"]], [None, None])


def test_non_pil_inputs_go_to_transformers(qwen, light):
    array = np.asarray(_images()["odd"])
    want = qwen.image_processor.processor([array], return_tensors="np")
    got = light.image_processor([array])
    np.testing.assert_array_equal(got["pixel_values"], want["pixel_values"])
    pieces, grids = light.image_processor.preprocess_grid([array])
    np.testing.assert_array_equal(pieces[0], want["pixel_values"])
    forced, _ = light.image_processor.preprocess_grid([array], [(112, 168)])
    np.testing.assert_array_equal(
        forced[0], light.image_processor.preprocess_grid([_images()["odd"]], [(112, 168)])[0][0]
    )


# --------------------------------------------------------------------------- the processor against transformers'


@pytest.mark.parametrize("kind", ["Qwen2_5_VLProcessor", "Qwen2VLProcessor"])
def test_processor_call_matches_transformers(qwen, kind):
    processor = qwen if kind == "Qwen2_5_VLProcessor" else build_qwen2_vl_processor(14, 2, MIN_PIXELS, MAX_PIXELS)
    hf = reference(processor)
    images = _images()
    pictures = [images["odd"], images["below-min-pixels"], images["wide"]]
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
    one = processor.apply_chat_template(conversation, add_generation_prompt=True)
    two = one.replace("What?", "<|vision_start|><|image_pad|><|vision_end|>and this one?")
    for text, pics, kwargs in (
        ([two, one], pictures, {"padding": True}),
        (one, pictures[:1], {}),
        ("no image at all", None, {}),
    ):
        want = hf(images=pics, text=text, return_tensors="pt", **kwargs)
        got = processor(images=pics, text=text, return_tensors="pt", **kwargs)
        assert list(got.keys()) == list(want.keys())
        for key in want:
            assert got[key].dtype == want[key].dtype, key
            assert got[key].tolist() == want[key].tolist(), key
    got = processor(images=pictures[:1], text=one, return_tensors="np")
    grid = got["image_grid_thw"][0]
    count = int((got["input_ids"] == processor.image_token_id).sum())
    assert count == grid[1] * grid[2] // 4 == processor.image_token_count((301, 517)) == 60
    assert got["mm_token_type_ids"].tolist() == (got["input_ids"] == 5).astype(np.int64).tolist()
    assert processor(images=pictures[:1])["pixel_values"].shape == (240, 1176)
    with pytest.raises(ValueError, match="should be the same as the number of images"):
        processor(images=pictures, text=one)
    with pytest.raises(ValueError, match="no images were passed"):
        processor(text=one)


def test_wrapping_keeps_the_transformers_image_processor(qwen):
    assert isinstance(qwen.image_processor, QwenImageProcessor)
    wrapped = qwen.image_processor
    assert wrapped.merge_size == 2 and wrapped.patch_size == 14 and wrapped.temporal_patch_size == 2
    assert (wrapped.min_pixels, wrapped.max_pixels) == (MIN_PIXELS, MAX_PIXELS)
    assert QwenVLProcessor(wrapped, qwen.tokenizer).image_processor is wrapped


# --------------------------------------------------------------------------- saved files, reloaded


def test_saved_files(qwen_dir):
    assert sorted(p.name for p in qwen_dir.iterdir()) == [
        "chat_template.jinja",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    config = json.loads((qwen_dir / "processor_config.json").read_text())
    assert config["processor_class"] == "Qwen2_5_VLProcessor"
    assert config["image_processor"]["image_processor_type"] == "Qwen2VLImageProcessor"
    assert config["image_processor"]["size"] == {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    assert config["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"  # AutoProcessor needs one
    assert json.loads((qwen_dir / "tokenizer_config.json").read_text())["processor_class"] == "Qwen2_5_VLProcessor"
    assert (qwen_dir / "chat_template.jinja").read_text() == QWEN2_5_VL_CHAT_TEMPLATE


def test_round_trips_give_the_same_ids(qwen, qwen_dir):
    parts = load_parts(qwen_dir)
    light = load_processor(qwen_dir)
    assert isinstance(parts, QwenVLProcessor) and parts.processor_class == "Qwen2_5_VLProcessor"
    assert isinstance(light, LightProcessor) and isinstance(light.image_processor, QwenVLImageProcessor)
    encoders = [PromptEncoder(p, QWEN_IMAGE_TOKEN_ID, 64, 4096, QWEN_PAD_ID) for p in (qwen, parts, light)]
    for prompt in PROMPTS:
        for counts in ([64], [12], None):
            with_image = counts is not None
            texts = {e.template(prompt, with_image) for e in encoders}
            assert len(texts) == 1
            ids = [e.tokens([prompt], counts).input_ids.tolist() for e in encoders]
            assert ids[0] == ids[1] == ids[2]
            if with_image:
                row = ids[0][0]
                at = row.index(QWEN_IMAGE_TOKEN_ID)
                assert row[at - 1] == QWEN_VISION_START_ID and row[at + counts[0]] == QWEN_VISION_END_ID
                assert row.count(QWEN_IMAGE_TOKEN_ID) == counts[0]
    # the templated prompt through the processors themselves: expansion by the picture's grid
    image = _images()["odd"]
    text = qwen.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}],
        add_generation_prompt=True,
    )
    want = qwen(images=[image], text=text, return_tensors="np")
    got = parts(images=[image], text=text, return_tensors="np")
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    light_ids = light.tokenizer(text.replace("<|image_pad|>", "<|image_pad|>" * 60)).input_ids
    assert light_ids == want["input_ids"][0].tolist()
    np.testing.assert_array_equal(light.image_processor([image])["pixel_values"], want["pixel_values"])
    sequence = want["input_ids"][0].tolist() + list(range(263))
    for skip in (True, False):
        assert light.tokenizer.decode(sequence, skip_special_tokens=skip) == qwen.decode(
            sequence, skip_special_tokens=skip
        )


def test_qwen2_vl_round_trip(tmp_path):
    path = tmp_path / "processor"
    build_qwen2_vl_processor(14, 2, MIN_PIXELS, MAX_PIXELS).save_pretrained(path)
    assert json.loads((path / "processor_config.json").read_text())["processor_class"] == "Qwen2VLProcessor"
    assert load_parts(path).processor_class == "Qwen2VLProcessor"
    light = load_processor(path)
    assert isinstance(light, LightProcessor) and isinstance(light.image_processor, QwenVLImageProcessor)


def test_load_parts_checks_the_model_geometry(qwen_dir):
    def config(model_type, merge=2):
        vision = SimpleNamespace(patch_size=14, spatial_merge_size=merge, temporal_patch_size=2)
        return SimpleNamespace(model_type=model_type, vision_config=vision)

    assert load_parts(qwen_dir, config("qwen2_vl")).processor_class == "Qwen2VLProcessor"
    assert load_parts(qwen_dir, config("qwen2_5_vl")).processor_class == "Qwen2_5_VLProcessor"
    with pytest.raises(ValueError, match="merge_size 2 is not the vision model's spatial_merge_size 4"):
        load_parts(qwen_dir, config("qwen2_5_vl", merge=4))


def test_checkpoint_style_preprocessor_config(qwen_dir, tmp_path):
    """Qwen/Qwen2.5-VL-*-Instruct's preprocessor_config.json (legacy min_pixels/max_pixels keys)."""
    from transformers import AutoImageProcessor

    path = tmp_path / "processor"
    shutil.copytree(qwen_dir, path)
    config = json.loads((path / "processor_config.json").read_text())
    config.pop("image_processor")
    (path / "processor_config.json").write_text(json.dumps(config))
    legacy = {
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
    }
    (path / "preprocessor_config.json").write_text(json.dumps(legacy))
    hf = AutoImageProcessor.from_pretrained(str(path), backend="pil")
    light = LightProcessor.from_dir(path).image_processor
    assert (light.min_pixels, light.max_pixels) == (3136, 12845056)
    for name in ("odd", "below-min-pixels", "above-max-pixels"):
        image = _images()[name]
        want, got = hf([image], return_tensors="np"), light([image])
        np.testing.assert_array_equal(got["image_grid_thw"], want["image_grid_thw"])
        np.testing.assert_array_equal(got["pixel_values"], want["pixel_values"])
    assert light.grid_of((700, 900)) == (50, 64)  # no downscaling below 12.8 M pixels


@pytest.mark.parametrize(
    "changes,reason",
    [
        ({"some_new_key": 1}, "image processor keys"),
        ({"size": {"height": 224, "width": 224}}, "size"),
        ({"patch_size": 0}, "patch_size"),
        ({"image_processor_type": "CLIPImageProcessor"}, "processor class 'Qwen2_5_VLProcessor' with image"),
        ({"do_convert_rgb": False}, "do_convert_rgb"),
    ],
    ids=["new-key", "height-width-size", "bad-patch", "clip", "no-rgb"],
)
def test_unhandled_image_configs_are_refused(qwen_dir, tmp_path, changes, reason):
    path = tmp_path / "processor"
    shutil.copytree(qwen_dir, path)
    config = json.loads((path / "processor_config.json").read_text())
    config["image_processor"].update(changes)
    (path / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedProcessor, match=reason):
        LightProcessor.from_dir(path)


@pytest.mark.parametrize(
    "changes",
    [{"do_rescale": False}, {"do_normalize": False, "resample": 2}, {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}],
    ids=["no-rescale", "bilinear-unnormalized", "siglip-mean-std"],
)
def test_image_config_variants_match_transformers(qwen_dir, tmp_path, changes):
    from transformers import AutoImageProcessor

    path = tmp_path / "processor"
    shutil.copytree(qwen_dir, path)
    config = json.loads((path / "processor_config.json").read_text())
    config["image_processor"].update(changes)
    (path / "processor_config.json").write_text(json.dumps(config))
    hf = AutoImageProcessor.from_pretrained(str(path), backend="pil")
    light = LightProcessor.from_dir(path).image_processor
    images = [_images()[n] for n in ("odd", "rgba", "below-min-pixels")]
    want, got = hf(images, return_tensors="np"), light(images)
    np.testing.assert_array_equal(got["image_grid_thw"], want["image_grid_thw"])
    np.testing.assert_array_equal(got["pixel_values"], want["pixel_values"])
