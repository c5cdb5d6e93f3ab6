"""Eager Hugging Face references for Qwen2.5-VL generation: unpruned, and with a method applied in PyTorch.

* ``hf_generate``: Hugging Face's own ``generate`` (greedy) on the processor's inputs: the ratio-0 target.
* ``hf_pruned_generate``: the same model with the selection done eagerly (METHODS.md, Qwen2.5-VL):
  the method's reference on Hugging Face's vision tower picks each picture's merged tokens, the prompt
  keeps one placeholder per kept token, the kept tokens and the text keep the 3-D positions
  ``get_rope_index`` gives the UNPRUNED prompt, and decoding continues from the unpruned ``rope_deltas``.
  A greedy loop over Hugging Face's model with its own cache; batch 1.

Used by the tests and by ``benchmarks/qwen_bench.py`` (the "HF + method eagerly" row).
"""

from __future__ import annotations

import time

import torch


def templated(processor, prompt: str, images: int | bool = True) -> str:
    """The chat template's prompt: ``images`` pictures (a bool: one or none), then the text."""
    content = [{"type": "image"}] * int(images) + [{"type": "text", "text": prompt}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def hf_inputs(processor, image, prompt: str) -> dict:
    """The processor's model inputs for one picture, a list of pictures (in prompt order) or None, and one
    prompt, as tensors."""
    images = [] if image is None else list(image) if isinstance(image, (list, tuple)) else [image]
    text = templated(processor, prompt, len(images))
    return dict(processor(images=images or None, text=[text], return_tensors="pt"))


@torch.no_grad()
def hf_generate(model, processor, image, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy tokens of Hugging Face's ``generate`` (new tokens only)."""
    inputs = hf_inputs(processor, image, prompt)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


@torch.no_grad()
def hf_pruned_generate(
    adapter, method, params: dict, image, prompt: str, max_new_tokens: int, ratio: float, on_token=None
):
    """Greedy tokens with ``method`` applied eagerly at ``ratio``; returns (tokens, kept indices, positions).
    ``on_token(time)`` is called as each token is produced (benchmarks time TTFT and decode with it)."""
    model, processor = adapter.model, adapter.processor
    inputs = hf_inputs(processor, image, prompt)
    ids, thw = inputs["input_ids"], inputs["image_grid_thw"]
    grid = (int(thw[0, 1]), int(thw[0, 2]))
    view = adapter.for_grid(grid)
    keep = adapter.keep_of(grid, ratio, None)
    patches = inputs["pixel_values"].reshape(1, grid[0] * grid[1], -1)
    kept, features, _ = method.reference(view, patches, keep, **params)
    kept = kept[0]
    positions, _ = model.model.get_rope_index(
        ids, inputs["mm_token_type_ids"], image_grid_thw=thw, attention_mask=inputs["attention_mask"]
    )
    is_image = ids[0] == adapter.text.image_token_id
    image_rows = torch.nonzero(is_image).flatten()
    start, end = int(image_rows[0]), int(image_rows[-1]) + 1
    # the kept tokens in the method's order (VisionZip: dominant, then contextual), each at its own position
    rows = torch.cat([torch.arange(start), image_rows[kept], torch.arange(end, ids.shape[1])])
    ids = ids[:, rows]
    positions = positions[:, :, rows]
    embeds = model.get_input_embeddings()(ids)
    embeds[0, ids[0] == adapter.text.image_token_id] = features[0].to(embeds.dtype)
    tokens = greedy(adapter, embeds, positions, max_new_tokens, on_token)
    return tokens, kept, positions


@torch.no_grad()
def greedy(adapter, embeds: torch.Tensor, positions: torch.Tensor, max_new_tokens: int, on_token=None) -> list[int]:
    """Greedy tokens of Hugging Face's language model on one prompt's embeddings [1, S, D] at M-RoPE
    ``positions`` [3, 1, S]; decoding continues at the prompt's largest position + 1 (the unpruned
    ``rope_deltas`` when the positions are the unpruned prompt's)."""
    from transformers import DynamicCache

    model = adapter.model
    cache = DynamicCache(config=model.config.text_config)
    mask = torch.ones(embeds.shape[:2], dtype=torch.int64)
    tokens: list[int] = []
    step_positions = positions
    for _ in range(max_new_tokens):
        out = model.model.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=step_positions, cache=cache, use_cache=True
        )
        token = int(model.lm_head(out.last_hidden_state[:, -1]).argmax(-1))
        tokens.append(token)
        if on_token is not None:
            on_token(time.perf_counter())
        if token in adapter.text.eos_token_ids:
            break
        step_positions = torch.full((3, 1, 1), int(positions.max()) + len(tokens), dtype=torch.int64)
        embeds = model.get_input_embeddings()(torch.tensor([[token]]))
        mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
    return tokens


@torch.no_grad()
def hf_input_selected_generate(adapter, name: str, params: dict, image, prompt: str, max_new_tokens: int, ratio):
    """Greedy tokens with an LLM-input method (DART, CDPruner) applied eagerly to Hugging Face's unpruned
    prompt embeddings (its own image features), the kept rows at their ``get_rope_index`` positions; returns
    (tokens, kept span indices)."""
    from tpc.methods.llm_input import input_keep, input_reference

    model, processor = adapter.model, adapter.processor
    inputs = hf_inputs(processor, image, prompt)
    ids = inputs["input_ids"]
    hf = model.model
    positions, _ = hf.get_rope_index(ids, inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"])
    features = hf.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output[0]
    embeds = model.get_input_embeddings()(ids)
    is_image = ids[0] == adapter.text.image_token_id
    embeds[0, is_image] = features.to(embeds.dtype)
    rows = torch.nonzero(is_image).flatten()
    start, end = int(rows[0]), int(rows[-1]) + 1
    text_mask = (~is_image).to(torch.int64)[None]
    keep = input_keep(end - start, ratio)
    kept = input_reference(name)(embeds[:, start:end], embeds, text_mask, keep, **params)[0]
    index = torch.cat([torch.arange(start), start + kept, torch.arange(end, ids.shape[1])])
    return greedy(adapter, embeds[:, index], positions[:, :, index], max_new_tokens), kept
