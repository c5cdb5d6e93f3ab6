"""The multi-crop families' light image processors (tpc.models.light_image_processors) against transformers.

LLaVA-NeXT's anyres crops, batch call, placeholder counts, prompt ids and config variants, loaded
once with transformers' ``AutoProcessor`` and once with ``LightProcessor`` from the same saved files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor

from tests.runtimes.test_light_processor import PROMPTS, _copy, _edit_json, _images, hf_processor
from tpc.runtimes.light_processor import LightProcessor, UnsupportedProcessor, load_processor
from tpc.runtimes.prompting import PromptEncoder

# --------------------------------------------------------------------------- LLaVA-NeXT (anyres)


@pytest.fixture(scope="module")
def next_dir(tmp_path_factory) -> Path:
    """The built-in LLaVA-NeXT processor (llava-v1.6-mistral-7b-hf's configuration), saved."""
    from tpc.models.tiny_processor import build_llava_next_processor

    path = tmp_path_factory.mktemp("next") / "processor"
    build_llava_next_processor().save_pretrained(str(path))
    return path


def _next_images():
    rng = np.random.default_rng(3)
    noise = (rng.random((900, 1100, 3)) * 255).astype(np.uint8)
    images = _images()
    images.update(
        {
            "next-tall": Image.fromarray(noise[:, :200]),
            "next-wide": Image.fromarray(noise[:200]),
            "next-square": Image.fromarray(noise[:700, :700]),
            "next-tiny": Image.fromarray(noise[:20, :300]),
            "next-large": Image.fromarray(noise),
            "next-2x1": Image.fromarray(noise[:672, :336]),
            "next-grayscale": Image.fromarray(noise[:400, :900, 1]),
            "next-rgba": Image.fromarray(np.dstack([noise[:500, :260], noise[:500, :260, 0]]), "RGBA"),
        }
    )
    return images


def test_the_next_processor_loads_without_transformers_and_reloads_with_it(next_dir):
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    processor = load_processor(next_dir)
    assert isinstance(processor, LightProcessor)
    assert processor.image_processor.geometry == {
        "pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        "crop_size": 336,
        "tokens_per_side": 24,
        "num_additional_image_tokens": 1,
        "vision_feature_select_strategy": "default",
    }
    hf = hf_processor(next_dir)
    assert isinstance(hf, LlavaNextProcessor) and isinstance(hf.image_processor, LlavaNextImageProcessorPil)
    assert (
        AutoProcessor.from_pretrained(str(next_dir)).image_processor.image_grid_pinpoints
        == hf.image_processor.image_grid_pinpoints
    )


@pytest.mark.parametrize("name", list(_next_images()))
def test_next_crops_match_transformers(next_dir, name):
    hf = hf_processor(next_dir).image_processor
    light = LightProcessor.from_dir(next_dir).image_processor
    image = _next_images()[name]
    want = hf([image], do_pad=False, return_tensors=None)
    crops, sizes = light.preprocess_anyres([image])
    assert sizes == [tuple(want["image_sizes"][0])] == [(image.height, image.width)]
    assert crops[0].dtype == np.float32 and crops[0].shape == want["pixel_values"][0].shape
    np.testing.assert_array_equal(crops[0], want["pixel_values"][0])


def test_next_batch_call_matches_transformers_and_crops_are_not_padded(next_dir):
    from tpc.models.anyres import num_crops

    hf = hf_processor(next_dir).image_processor
    light = LightProcessor.from_dir(next_dir).image_processor
    images = _next_images()
    batch = [images["next-tiny"], images["next-large"], images["rgba"], images["next-tall"]]
    want, got = hf(batch, return_tensors="np"), light(batch)
    assert got["pixel_values"].shape == want["pixel_values"].shape == (4, 5, 3, 336, 336)
    np.testing.assert_array_equal(got["pixel_values"], want["pixel_values"])
    np.testing.assert_array_equal(got["image_sizes"], want["image_sizes"])
    crops, sizes = light.preprocess_anyres(batch)
    geometry = light.geometry
    assert [len(c) for c in crops] == [num_crops(s, geometry["pinpoints"], geometry["crop_size"]) for s in sizes]
    assert [len(c) for c in crops] == [3, 5, 3, 4]  # 1x2, 2x2, 2x1 and 3x1 grids
    for row, c in enumerate(crops):
        np.testing.assert_array_equal(c, want["pixel_values"][row, : len(c)])
        assert not want["pixel_values"][row, len(c) :].any()  # transformers' padding crops


def test_next_non_pil_inputs_go_to_transformers(next_dir):
    hf = hf_processor(next_dir).image_processor
    light = LightProcessor.from_dir(next_dir).image_processor
    array = np.asarray(_next_images()["next-wide"])
    crops, sizes = light.preprocess_anyres([array])
    want = hf([array], do_pad=False, return_tensors=None)
    assert sizes == [(200, 1100)]
    np.testing.assert_array_equal(crops[0], want["pixel_values"][0])
    np.testing.assert_array_equal(light([array])["pixel_values"], hf([array], return_tensors="np")["pixel_values"])


def test_next_placeholder_counts_match_transformers(next_dir):
    hf = hf_processor(next_dir)
    light = LightProcessor.from_dir(next_dir)
    for name, image in _next_images().items():
        text = light.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}],
            add_generation_prompt=True,
        )
        out = hf(text=text, images=image, return_tensors="np")
        want = int((out["input_ids"] == hf.image_token_id).sum())
        assert light.image_processor.image_token_count((image.height, image.width)) == want, name


@pytest.mark.parametrize("prompt", PROMPTS[:4])
@pytest.mark.parametrize("with_image", [True, False])
def test_next_prompt_ids_match_transformers(next_dir, prompt, with_image):
    hf = PromptEncoder(hf_processor(next_dir), image_token_id=4, image_tokens=64, max_context=4096, pad_token_id=3)
    light = PromptEncoder(LightProcessor.from_dir(next_dir), 4, 64, 4096, 3)
    assert light.template(prompt, with_image) == hf.template(prompt, with_image)
    assert light.template("x", True) == "[INST] <image>\nx [/INST]"
    counts = [64] if with_image else None
    assert light.tokens([prompt], counts).input_ids.tolist() == hf.tokens([prompt], counts).input_ids.tolist()


def _edit_next_image_config(path: Path, changes: dict) -> None:
    config = json.loads((path / "processor_config.json").read_text())
    config["image_processor"].update(changes)
    (path / "processor_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "changes",
    [
        {"resample": 2},
        {"resample": 0, "do_normalize": False},
        {"do_rescale": False},
        {"do_resize": False},
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.5, 1.0], "rescale_factor": 0.01},
        {"size": {"height": 336, "width": 336}},
        {"size": {"shortest_edge": 300}},  # the base crop smaller than the crop size: zero padded
        {"do_pad": False},
        {"aspect_ratio_setting": "anyres"},  # what llava-hf/llava-v1.6-*-hf's preprocessor_config.json holds
        {"image_grid_pinpoints": [[336, 336]]},
        {"image_grid_pinpoints": [[h, w] for h in (336, 672, 1008) for w in (336, 672, 1008)]},
        {"image_processor_type": "LlavaNextImageProcessorPil"},
    ],
    ids=[
        "bilinear",
        "nearest-unnormalized",
        "no-rescale",
        "no-resize",
        "mean-std-factor",
        "size-height-width",
        "small-base",
        "no-batch-padding",
        "aspect-ratio-setting",
        "one-crop-pinpoint",
        "3x3-pinpoints",
        "pil-type-name",
    ],
)
def test_next_image_processor_variants_match_transformers(next_dir, tmp_path, changes):
    path = _copy(next_dir, tmp_path)
    _edit_next_image_config(path, changes)
    hf = hf_processor(path).image_processor
    light = LightProcessor.from_dir(path).image_processor
    images = _next_images()
    names = ["next-tall", "next-wide", "next-tiny", "next-large", "next-rgba", "one-pixel", "very-wide", "cmyk"]
    for name in names:
        want = hf([images[name]], do_pad=False, return_tensors=None)
        crops, sizes = light.preprocess_anyres([images[name]])
        assert sizes == [tuple(want["image_sizes"][0])], name
        assert crops[0].shape == np.asarray(want["pixel_values"][0]).shape, name
        np.testing.assert_allclose(crops[0], want["pixel_values"][0], rtol=0, atol=1e-6, err_msg=name)
    batch = [images[n] for n in names[:3]]
    want, got = hf(batch, return_tensors=None), light(batch)
    for w, g in zip(want["pixel_values"], got["pixel_values"], strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)


def test_legacy_preprocessor_config_file_for_next(next_dir, tmp_path):
    path = _copy(next_dir, tmp_path)
    config = json.loads((path / "processor_config.json").read_text())
    (path / "preprocessor_config.json").write_text(json.dumps(config.pop("image_processor")))
    (path / "processor_config.json").write_text(json.dumps(config))
    hf = hf_processor(path).image_processor
    light = LightProcessor.from_dir(path).image_processor
    image = _next_images()["next-tall"]
    np.testing.assert_array_equal(light([image])["pixel_values"], hf([image], return_tensors="np")["pixel_values"])


@pytest.mark.parametrize(
    "image_changes,processor_changes,reason",
    [
        ({"image_grid_pinpoints": [[400, 700]]}, {}, "not multiples of the crop size"),
        ({"do_center_crop": False}, {}, "do_center_crop"),
        ({"crop_size": {"height": 336, "width": 300}}, {}, "crop_size"),
        ({"aspect_ratio_setting": "pad"}, {}, "aspect_ratio_setting"),
        ({"some_new_key": 1}, {}, "image processor keys"),
        ({}, {"patch_size": None}, "patch_size"),
        ({}, {"vision_feature_select_strategy": None}, "vision_feature_select_strategy"),
        ({"image_processor_type": "CLIPImageProcessor"}, {}, "processor class 'LlavaNextProcessor' with image"),
    ],
    ids=[
        "odd-pinpoints",
        "no-center-crop",
        "non-square-crop",
        "pad-setting",
        "new-key",
        "no-patch-size",
        "no-strategy",
        "clip",
    ],
)
def test_unhandled_next_configs_fall_back_to_transformers(
    next_dir, tmp_path, caplog, image_changes, processor_changes, reason
):
    path = _copy(next_dir, tmp_path)
    _edit_next_image_config(path, image_changes)
    _edit_json(path / "processor_config.json", **processor_changes)
    with pytest.raises(UnsupportedProcessor, match=reason):
        LightProcessor.from_dir(path)
    if image_changes.get("image_processor_type") == "CLIPImageProcessor" or "patch_size" in processor_changes:
        return  # transformers cannot use these edits either
    with caplog.at_level(logging.DEBUG, logger="tpc.runtimes.light_processor"):
        processor = load_processor(path)
    assert not isinstance(processor, LightProcessor)
    assert any("loading it with transformers" in r.getMessage() for r in caplog.records)
    image = _next_images()["next-tiny"]
    assert processor.image_processor([image], return_tensors="np")["pixel_values"].ndim == 5
