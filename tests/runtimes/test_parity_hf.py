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
