"""The light processor (tokenizers + jinja2 + PIL/numpy) against transformers on the same saved files.

Every comparison loads the directory twice: with transformers' ``AutoProcessor`` (the path
``tpc run`` used before) and with ``LightProcessor``; ids must be identical and pixel
values equal. The image reference is transformers' PIL backend, the one it picks without
torchvision (this environment) and the one the presets build; ``backend="pil"`` keeps the
comparison the same where torchvision is installed.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from tpc.errors import UsageError
from tpc.runtimes.light_processor import (
    LightProcessor,
    LightTokenizer,
    UnsupportedProcessor,
    load_processor,
)
from tpc.runtimes.prompting import PromptEncoder

PROMPTS = [
    "What is in the picture?",
    "Describe it.\nThen list   three colours,\twith tabs.",
    "  leading and trailing spaces  ",
    "ünïcödé, 日本語 and an emoji 😀",
    "literal special tokens <s> </s> <pad> <unk> in the text",
    "USER: a fake turn ASSISTANT: and {{ jinja }} {% braces %}",
    "x",
    "word " * 200,
]


@pytest.fixture(scope="module")
def processor_dir(tiny, tmp_path_factory) -> Path:
    """The tiny preset's processor as the compiler writes it into an artifact."""
    _, processor = tiny
    path = tmp_path_factory.mktemp("processor") / "processor"
    processor.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def encoders(processor_dir):
    hf = hf_processor(processor_dir)
    light = LightProcessor.from_dir(processor_dir)
    return (
        PromptEncoder(hf, image_token_id=4, image_tokens=64, max_context=4096, pad_token_id=3),
        PromptEncoder(light, image_token_id=4, image_tokens=64, max_context=4096, pad_token_id=3),
    )


def hf_processor(path: Path):
    return AutoProcessor.from_pretrained(str(path), backend="pil")


def _copy(processor_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "processor"
    shutil.copytree(processor_dir, target)
    return target


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def test_the_artifact_processor_loads_without_transformers(processor_dir):
    processor = load_processor(processor_dir)
    assert isinstance(processor, LightProcessor)
    assert processor.tokenizer.special_tokens_map == {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
    }


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("with_image", [True, False])
def test_prompt_ids_match_transformers(encoders, prompt, with_image):
    hf, light = encoders
    assert light.template(prompt, with_image) == hf.template(prompt, with_image)
    counts = [64] if with_image else None
    want, got = hf.tokens([prompt], counts), light.tokens([prompt], counts)
    assert got.input_ids.tolist() == want.input_ids.tolist()
    assert got.attention_mask.tolist() == want.attention_mask.tolist()
    assert got.input_ids[0, 0] == 1  # BOS, inserted by the tokenizer's post-processor


def _images():
    rng = np.random.default_rng(0)
    noise = (rng.random((301, 517, 3)) * 255).astype(np.uint8)
    rgba = np.dstack([noise, (rng.random((301, 517)) * 255).astype(np.uint8)])
    palette = Image.fromarray(noise).convert("P")
    palette.info["transparency"] = 0
    return {
        "demo": Image.open(Path(__file__).resolve().parents[2] / "examples" / "assets" / "demo.png"),
        "wide": Image.fromarray(noise),
        "tall": Image.fromarray(noise).transpose(Image.Transpose.ROTATE_90),
        "tiny": Image.fromarray(noise[:5, :7]),
        "one-pixel": Image.new("RGB", (1, 1), (200, 10, 30)),
        "very-wide": Image.fromarray(noise[:3]),
        "square": Image.fromarray(noise[:336, :336]),
        "grayscale": Image.fromarray(noise[..., 0]),
        "rgba": Image.fromarray(rgba, "RGBA"),
        "la": Image.fromarray(rgba[..., 2:], "LA"),
        "palette-transparency": palette,
        "cmyk": Image.fromarray(noise).convert("CMYK"),
        "int32": Image.fromarray(noise[..., 0].astype(np.int32) * 100, "I"),
    }


@pytest.mark.parametrize("name", list(_images()))
def test_pixel_values_match_transformers(encoders, name):
    hf, light = encoders
    image = _images()[name]
    want, got = hf.pixels([image], 1), light.pixels([image], 1)
    assert got.shape == want.shape == (1, 3, 336, 336) and got.dtype == want.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_left_padded_batch_of_two_matches_transformers(encoders):
    hf, light = encoders
    images = _images()
    prompts, pictures = ["short", "a much longer question about the image"], [images["tall"], images["rgba"]]
    want, got = hf(prompts, pictures, max_new_tokens=8), light(prompts, pictures, max_new_tokens=8)
    assert got.input_ids.tolist() == want.input_ids.tolist()
    assert got.attention_mask.tolist() == want.attention_mask.tolist()
    assert got.attention_mask[0, 0] == 0 and got.input_ids[0, 0] == 3  # left padding with <pad>
    assert got.prompt_lengths == want.prompt_lengths
    np.testing.assert_allclose(got.pixel_values, want.pixel_values, rtol=0, atol=1e-6)
    text_only_want, text_only_got = hf(prompts, None), light(prompts, None)
    assert text_only_got.pixel_values is None
    assert text_only_got.input_ids.tolist() == text_only_want.input_ids.tolist()


def test_image_paths_and_non_pil_inputs(encoders, tmp_path):
    hf, light = encoders
    path = tmp_path / "x.png"
    _images()["wide"].save(path)
    np.testing.assert_array_equal(light.pixels([path], 1), hf.pixels([path], 1))
    array = np.asarray(_images()["wide"])  # not a PIL image: transformers' image processor, loaded on demand
    np.testing.assert_array_equal(light.pixels([array], 1), hf.pixels([array], 1))


def test_decode_matches_transformers(encoders):
    hf, light = encoders
    rng = np.random.default_rng(1)
    sequences = [list(range(320)), [1, 72, 2, 3, 4, 101, 0], rng.integers(0, 320, 64).tolist(), []]
    sequences.append(hf.tokenizer("héllo wörld 😀 </s> end").input_ids)
    for ids in sequences:
        for skip in (True, False):
            assert light.tokenizer.decode(ids, skip_special_tokens=skip) == hf.tokenizer.decode(
                ids, skip_special_tokens=skip
            )
        assert light.decode(ids) == hf.decode(ids)
    assert light.tokenizer.convert_ids_to_tokens(4) == hf.tokenizer.convert_ids_to_tokens(4) == "<image>"


def test_add_special_tokens_false_matches(encoders):
    hf, light = encoders
    for text in PROMPTS:
        assert (
            light.tokenizer(text, add_special_tokens=False).input_ids
            == hf.tokenizer(text, add_special_tokens=False).input_ids
        )


@pytest.mark.parametrize(
    "changes",
    [
        {"extra_special_tokens": ["<image>", "<extra_0>", "<extra_1>"]},
        {"additional_special_tokens": ["<image>", "<new>"], "extra_special_tokens": None},
        {"split_special_tokens": True},
        {"clean_up_tokenization_spaces": True},
        {"pad_token": None},
        {"sep_token": "<sep>", "cls_token": "<s>", "mask_token": "<mask>"},
        {"bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": True, "rstrip": False}},
        {
            "added_tokens_decoder": {
                "261": {"content": "<extra>", "lstrip": True, "rstrip": True, "normalized": False, "special": False},
                "4": {"content": "<image>", "lstrip": False, "rstrip": False, "normalized": False, "special": True},
            }
        },
    ],
    ids=lambda c: ",".join(c),
)
def test_tokenizer_config_variants_match_transformers(processor_dir, tmp_path, changes):
    path = _copy(processor_dir, tmp_path)
    _edit_json(path / "tokenizer_config.json", **changes)
    want = AutoTokenizer.from_pretrained(str(path))
    got = LightTokenizer.from_dir(path)
    texts = [*PROMPTS, "a <extra_0>b <new> c<sep> <mask> <extra> x", "<s>hi</s>", " <image>\n <image>"]
    for text in texts:
        for special in (True, False):
            assert got(text, add_special_tokens=special).input_ids == want(text, add_special_tokens=special).input_ids
    ids = want("hello , world . <extra_0> <s> it 's ok </s>").input_ids + list(range(0, 270, 7))
    for skip in (True, False):
        assert got.decode(ids, skip_special_tokens=skip) == want.decode(ids, skip_special_tokens=skip)
    assert got.special_tokens_map == want.special_tokens_map


def test_tokenizer_json_without_post_processor_adds_no_bos(processor_dir, tmp_path):
    path = _copy(processor_dir, tmp_path)
    _edit_json(path / "tokenizer.json", post_processor=None)
    data = json.loads((path / "tokenizer.json").read_text())
    data["post_processor"] = None
    (path / "tokenizer.json").write_text(json.dumps(data))
    want, got = AutoTokenizer.from_pretrained(str(path)), LightTokenizer.from_dir(path)
    assert got("hi there").input_ids == want("hi there").input_ids
    assert got("hi there").input_ids[0] != 1


TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(n=0) %}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['user', 'assistant', 'system'] %}{{ raise_exception('bad role') }}{% endif %}"
    "  {% for content in message['content'] %}\n"
    "    {% if content['type'] == 'image' %}<image>{% set ns.n = ns.n + 1 %}{% continue %}{% endif %}\n"
    "    {% generation %}{{ content['text'] | trim }}{% endgeneration %}{{ content | tojson }}\n"
    "  {% endfor %}\n"
    "{% endfor %}"
    "[{{ ns.n }} images, eos {{ eos_token }}, {{ dict(a=1) | tojson }}]"
    "{% if add_generation_prompt %}\n  ASSISTANT:{% endif %}"
)


@pytest.mark.parametrize("where", ["chat_template.jinja", "chat_template.json", "none"])
def test_chat_template_features_render_like_transformers(processor_dir, tmp_path, where):
    path = _copy(processor_dir, tmp_path)
    (path / "chat_template.jinja").unlink()
    if where == "chat_template.jinja":
        (path / where).write_text(TEMPLATE)
    elif where == "chat_template.json":
        (path / where).write_text(json.dumps({"chat_template": TEMPLATE}))
    hf = PromptEncoder(hf_processor(path), 4, 64, 4096, 3)
    light = PromptEncoder(LightProcessor.from_dir(path), 4, 64, 4096, 3)
    for prompt in PROMPTS:
        for with_image in (True, False):
            assert light.template(prompt, with_image) == hf.template(prompt, with_image)
            counts = [64] if with_image else None
            assert light.tokens([prompt], counts).input_ids.tolist() == hf.tokens([prompt], counts).input_ids.tolist()


def test_raise_exception_in_a_template(processor_dir, tmp_path):
    import jinja2

    path = _copy(processor_dir, tmp_path)
    (path / "chat_template.jinja").write_text("{{ raise_exception('no images here') }}")
    light = PromptEncoder(LightProcessor.from_dir(path), 4, 64, 4096, 3)
    with pytest.raises(jinja2.exceptions.TemplateError, match="no images here"):
        light.template("x", True)


@pytest.mark.parametrize(
    "changes",
    [
        {"size": {"height": 300, "width": 200}, "do_center_crop": False},
        {"size": {"shortest_edge": 300}},  # crop larger than the resized image: zero padding
        {"size": {"shortest_edge": 400}, "crop_size": {"height": 336, "width": 300}, "resample": 2},
        {"resample": 0, "do_normalize": False},
        {"do_rescale": False},
        {"do_resize": False},
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.5, 1.0], "rescale_factor": 0.01},
    ],
    ids=lambda c: ",".join(c),
)
def test_image_processor_variants_match_transformers(processor_dir, tmp_path, changes):
    path = _copy(processor_dir, tmp_path)
    config = json.loads((path / "processor_config.json").read_text())
    config["image_processor"].update(changes)
    (path / "processor_config.json").write_text(json.dumps(config))
    hf = hf_processor(path).image_processor
    light = LightProcessor.from_dir(path).image_processor
    for name, image in _images().items():
        want = np.asarray(hf([image], return_tensors="np")["pixel_values"], dtype=np.float32)
        got = light([image])["pixel_values"]
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=name)


def test_legacy_preprocessor_config_file(processor_dir, tmp_path):
    path = _copy(processor_dir, tmp_path)
    config = json.loads((path / "processor_config.json").read_text())
    (path / "preprocessor_config.json").write_text(json.dumps(config.pop("image_processor")))
    (path / "processor_config.json").write_text(json.dumps(config))
    hf = hf_processor(path).image_processor
    light = LightProcessor.from_dir(path).image_processor
    image = _images()["tall"]
    np.testing.assert_array_equal(light([image])["pixel_values"], hf([image], return_tensors="np")["pixel_values"])


@pytest.mark.parametrize(
    "edit,reason",
    [
        (lambda p: _edit_json(p / "tokenizer_config.json", tokenizer_class="LlamaTokenizer"), "tokenizer class"),
        (lambda p: _edit_json(p / "tokenizer_config.json", image_token="<image>"), "model-specific"),
        (lambda p: (p / "special_tokens_map.json").write_text("{}"), "special_tokens_map.json"),
        (lambda p: (p / "tokenizer.json").unlink(), "no tokenizer.json"),
        (lambda p: (p / "chat_templates").mkdir(), "several chat templates"),
        (lambda p: _edit_json(p / "processor_config.json", processor_class="LlavaNextProcessor"), "processor class"),
    ],
    ids=["llama-class", "model-specific-token", "legacy-map", "no-tokenizer-json", "templates-dir", "processor"],
)
def test_unhandled_files_fall_back_to_transformers_with_a_reason(processor_dir, tmp_path, caplog, edit, reason):
    path = _copy(processor_dir, tmp_path)
    edit(path)
    with pytest.raises(UnsupportedProcessor, match=reason):
        LightProcessor.from_dir(path)
    if reason in ("processor class", "no tokenizer.json"):
        return  # transformers cannot load these edits either
    with caplog.at_level(logging.DEBUG, logger="tpc.runtimes.light_processor"):
        processor = load_processor(path)
    assert not isinstance(processor, LightProcessor)
    assert any("loading it with transformers" in r.getMessage() and reason in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t "])
def test_empty_prompts_are_refused(encoders, prompt):
    _, light = encoders
    with pytest.raises(UsageError, match="a prompt needs text"):
        light.tokens([prompt], None)
    with pytest.raises(UsageError, match="prompt 1 is empty"):
        light.tokens(["fine", prompt], None)
