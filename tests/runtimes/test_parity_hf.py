"""Compiled artifacts against Hugging Face on the same model, token for token."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from tpc.methods import METHODS
from tpc.runtimes.compiled_model import CompiledModel

PROMPTS = ["What is in the picture?", "Describe the colours you can see in this image, please."]


def _hf_generate(model, batch, new_tokens, features=None):
    kwargs = dict(
        input_ids=torch.from_numpy(batch.input_ids),
        attention_mask=torch.from_numpy(batch.attention_mask),
        max_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=model.config.text_config.pad_token_id,
    )
    if features is not None:
        kwargs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=list(features))}
    elif batch.pixel_values is not None:
        kwargs["pixel_values"] = torch.from_numpy(batch.pixel_values)
    with torch.no_grad():
        out = model.generate(**kwargs)
    return out[:, batch.input_ids.shape[1] :].tolist()


def _trim(tokens, eos, pad):
    out = []
    for t in tokens:
        out.append(t)
        if t in eos:
            break
    return out


@pytest.mark.parametrize("batch_size", [1, 2])
def test_pruned_artifact_matches_hf_fed_the_same_pruned_features(artifacts, tiny, tiny_adapter, demo_image, batch_size):
    model, _ = tiny
    compiled = CompiledModel.load(artifacts(0.89, "ort"))
    keep = compiled.runtime["keep"]
    assert keep == 64
    images = [demo_image, demo_image.rotate(90, expand=True)][:batch_size]
    prompts = PROMPTS[:batch_size]
    result = compiled.generate(prompts, images, max_new_tokens=12)

    batch = compiled.encoder(prompts, images, max_new_tokens=12)
    pixels = torch.from_numpy(batch.pixel_values)
    ref_idx, ref_features, _ = METHODS.get("fastervlm").reference(tiny_adapter, pixels, keep)
    assert np.array_equal(result.kept_indices, ref_idx.numpy())
    expected = _hf_generate(model, batch, 12, features=ref_features)
    eos = set(compiled.runtime["eos_token_ids"])
    for got, want in zip(result.token_ids, expected, strict=True):
        assert got == _trim(want, eos, compiled.runtime["pad_token_id"])


def test_ratio_zero_matches_plain_hf_generate(artifacts, tiny, demo_image):
    model, _ = tiny
    compiled = CompiledModel.load(artifacts(0.0, "onnx"))
    assert compiled.runtime["keep"] == 576
    result = compiled.generate([PROMPTS[0]], [demo_image], max_new_tokens=12)
    assert result.kept_indices.tolist() == [list(range(576))]
    batch = compiled.encoder([PROMPTS[0]], [demo_image], max_new_tokens=12)
    expected = _hf_generate(model, batch, 12)
    assert result.token_ids[0] == _trim(expected[0], set(compiled.runtime["eos_token_ids"]), None)


def test_text_only_prompt_matches_hf(artifacts, tiny):
    model, _ = tiny
    compiled = CompiledModel.load(artifacts(0.89, "ort"))
    result = compiled.generate(PROMPTS, None, max_new_tokens=8)
    assert result.kept_indices is None
    batch = compiled.encoder(PROMPTS, None, max_new_tokens=8)
    expected = _hf_generate(model, batch, 8)
    eos = set(compiled.runtime["eos_token_ids"])
    for got, want in zip(result.token_ids, expected, strict=True):
        assert got == _trim(want, eos, None)


def test_batch_rows_equal_single_runs(artifacts, demo_image):
    compiled = CompiledModel.load(artifacts(0.89, "ort"))
    images = [demo_image, demo_image.transpose(0)]
    both = compiled.generate(PROMPTS, images, max_new_tokens=6)
    for row in range(2):
        single = compiled.generate([PROMPTS[row]], [images[row]], max_new_tokens=6)
        assert single.token_ids[0] == both.token_ids[row]
        assert np.array_equal(single.kept_indices[0], both.kept_indices[row])


def test_several_pictures_per_prompt_and_mixed_counts_match_hf(artifacts, tiny, demo_image):
    """A prompt with two pictures and one with none, in one batch: Hugging Face's own processor expands the
    same placeholders and its generate gives the same tokens (ratio 0: every picture's 576 rows)."""
    model, processor = tiny
    compiled = CompiledModel.load(artifacts(0.0, "onnx"))
    other = demo_image.rotate(90, expand=True)
    images = [[demo_image, other], None]
    result = compiled.generate(PROMPTS, images, max_new_tokens=10)
    assert result.picture_tokens == [[576, 576], []] and result.image_tokens == [1152, 0]
    batch = compiled.encoder(PROMPTS, images, max_new_tokens=10)
    templated = compiled.encoder.template(PROMPTS[0], 2)
    hf_ids = processor(images=[demo_image, other], text=[templated], return_tensors="np")["input_ids"][0]
    np.testing.assert_array_equal(batch.input_ids[0][batch.attention_mask[0] == 1], hf_ids)
    expected = _hf_generate(model, batch, 10)
    eos = set(compiled.runtime["eos_token_ids"])
    for got, want in zip(result.token_ids, expected, strict=True):
        assert got == _trim(want, eos, None)
    alone = compiled.generate([PROMPTS[0]], [[demo_image, other]], max_new_tokens=10)
    assert alone.token_ids[0] == result.token_ids[0]


def test_pruned_pictures_of_one_prompt_are_each_pruned_as_alone(artifacts, tiny, tiny_adapter, demo_image):
    """FasterVLM keeps K rows of EACH picture; the rows are the pictures' own, in prompt order."""
    model, _ = tiny
    compiled = CompiledModel.load(artifacts(0.89, "ort"))
    other = demo_image.rotate(90, expand=True)
    result = compiled.generate([PROMPTS[0]], [[demo_image, other]], max_new_tokens=8)
    batch = compiled.encoder([PROMPTS[0]], [[demo_image, other]], max_new_tokens=8)
    ref_idx, ref_features, _ = METHODS.get("fastervlm").reference(
        tiny_adapter, torch.from_numpy(batch.pixel_values), 64
    )
    assert result.picture_tokens == [[64, 64]]
    np.testing.assert_array_equal(result.kept_indices[0], ref_idx.numpy().reshape(-1))
    expected = _hf_generate(model, batch, 8, features=ref_features)
    assert result.token_ids[0] == _trim(expected[0], set(compiled.runtime["eos_token_ids"]), None)


def test_a_generated_image_token_embeds_as_text_like_hf(artifacts, tiny):
    """A decode step whose token is the image token gets that token's embedding (HF embeds generated ids
    with the table), not an image feature: the artifact records the row and the decode step feeds it."""
    from tpc.runtimes.generate import decode_placeholder

    model, _ = tiny
    compiled = CompiledModel.load(artifacts(0.89, "ort"))
    image_id = compiled.runtime["image_token_id"]
    ids = np.array([[image_id], [5]], dtype=np.int64)
    got = compiled.graphs.embed(ids, decode_placeholder(compiled.generate_runtime, 2))
    with torch.no_grad():
        want = model.get_input_embeddings()(torch.from_numpy(ids)).numpy()
    np.testing.assert_array_equal(got, want)
    assert not decode_placeholder(compiled.runtime, 1).any()  # an artifact without the row: zeros, as before
