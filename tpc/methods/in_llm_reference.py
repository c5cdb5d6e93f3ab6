"""Eager PyTorch reference of in-LLM pruning, applied inside Hugging Face's Llama layers.

Written independently of the exported segments: the score comes from the FULL eager
attention matrix of the scoring layer (softmax(QK^T * scale + mask), then its last row),
the survivors are picked by a stable sort, the mask is built with ``tril``, and HF's
``DynamicCache`` holds the per-layer keys/values (so its per-layer lengths are what the
rule produced). Greedy decoding continues with per-layer masks and positions.

DART inside the LLM (a stage with ``rule == "dart"``): the pivots' key norms come from the
scoring layer's own input norm, ``k_proj`` and RoPE, recomputed on that layer's input (and
checked against the keys HF's attention cached), the cosines from ``language_model.norm``
of the hidden states entering the stage, and the selection is the naive per-sample loop of
``tpc.methods.llm_input_reference.reference_dart`` (float64, Python sorts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tpc.methods.in_llm import DART, RENUMBERED, PruningPlan
from tpc.methods.selection import reference_topk_ascending
from tpc.models.decoder_common import cache_kwargs


@dataclass
class ReferenceRun:
    logits: list[torch.Tensor] = field(default_factory=list)  # per call, [B,V] of the last position
    tokens: list[list[int]] = field(default_factory=list)  # greedy ids per sample
    kept: list[torch.Tensor] = field(default_factory=list)  # per stage, [B,keep] (stage-relative)
    scores: list[torch.Tensor] = field(default_factory=list)  # per stage, [B,n_in] image scores
    kv_lengths: list[int] = field(default_factory=list)  # per layer, after the run
    positions: list[torch.Tensor] = field(default_factory=list)  # per layer, prefill position ids


def _additive_mask(key_mask: torch.Tensor, query_len: int, dtype) -> torch.Tensor:
    total = key_mask.shape[1]
    causal = torch.ones(query_len, total, dtype=torch.bool).tril(diagonal=total - query_len)
    visible = causal[None, None] & key_mask[:, None, None, :].bool()
    return torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)


def _attention_weights(layer, hidden, cos, sin, mask4) -> torch.Tensor:
    """The layer's full eager attention probabilities [B,H,T,T] (no cache involved)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    shape = (*x.shape[:-1], -1, attn.head_dim)
    q = attn.q_proj(x).view(shape).transpose(1, 2)
    k = attn.k_proj(x).view(shape).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = repeat_kv(k, attn.num_key_value_groups)
    return torch.softmax(torch.matmul(q, k.transpose(2, 3)) * attn.scaling + mask4, dim=-1)


def key_l1_norms(layer, hidden, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
    """[B,T]: L1 norm of each position's post-RoPE key in ``layer`` (its KV heads concatenated, fp32),
    and the keys themselves [B, KV heads, T, head_dim]."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    b, t, _ = x.shape
    k = attn.k_proj(x).view(b, t, -1, attn.head_dim).transpose(1, 2)
    k, _ = apply_rotary_pos_emb(k, k, cos, sin)
    return k.transpose(1, 2).reshape(b, t, -1).float().abs().sum(dim=-1), k


def reference_dart_stage(normed, key_norm, mask, image_start, n_img: int, keep: int, parameters: dict):
    """DART's kept rows [B,keep] of each sample's image block (stage-relative, ascending), per sample."""
    from tpc.methods.llm_input_reference import reference_dart

    rows = image_start[:, None] + torch.arange(n_img)[None]
    image = normed[torch.arange(normed.shape[0])[:, None], rows]
    text_mask = mask.clone().bool()
    for b, start in enumerate(image_start.tolist()):
        text_mask[b, start : start + n_img] = False
    return reference_dart(
        image,
        normed,
        text_mask,
        keep,
        parameters["image_pivots"],
        parameters["text_pivots"],
        image_key=torch.gather(key_norm, 1, rows),
        text_key=key_norm,
    )


@torch.no_grad()
def reference_generate(
    model,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    image_start: torch.Tensor | None,
    plan: PruningPlan,
    max_new_tokens: int = 1,
    step_embeds: list[torch.Tensor] | None = None,
    positions: torch.Tensor | None = None,
) -> ReferenceRun:
    """Prefill (pruning at each stage when an image is present), then greedy decode steps.

    ``step_embeds``: the embeddings fed at each decode step; default: the embedding of
    the greedy token (what generation does). ``positions``: the prompt's position ids, [B, S]
    or M-RoPE's [B, S, 3] (t, h, w); default: 0, 1, ... over the mask.
    """
    from transformers import DynamicCache

    lm = model.model.language_model
    run = ReferenceRun()
    cache = DynamicCache(config=model.config.text_config)
    stages = {s.layer: s for s in plan.stages} if image_start is not None else {}
    h, m = embeds, mask.to(torch.int64)
    pos = (m.cumsum(-1) - 1).clamp(min=0) if positions is None else positions
    mrope = pos.dim() == 3

    def rotary(x, p):  # M-RoPE's rotary takes [3, B, S]
        return lm.rotary_emb(x, p.permute(2, 0, 1) if mrope else p)

    def layer_pos(p):
        return None if mrope else p

    inputs: list[torch.Tensor] = []
    layer_mask, layer_last = [], []
    n_img = plan.image_tokens
    for i, layer in enumerate(lm.layers):
        if i in stages:
            stage = stages[i]
            src = inputs[stage.score_layer] if stage.score_layer < i else h
            cos, sin = rotary(src, pos)
            ids = image_start[:, None] + torch.arange(n_img)[None]
            if stage.rule == DART:
                key_norm, keys = key_l1_norms(lm.layers[stage.score_layer], src, cos, sin)
                cached = cache.layers[stage.score_layer].keys  # what HF's own attention cached
                if keys.dtype == torch.float32 and not torch.allclose(keys, cached, rtol=1e-4, atol=1e-5):
                    raise AssertionError(f"layer {stage.score_layer}: recomputed keys differ from HF's cached keys")
                image_scores = torch.gather(key_norm, 1, ids)
                kept = reference_dart_stage(lm.norm(h), key_norm, m, image_start, n_img, stage.keep, plan.parameters)
            else:
                weights = _attention_weights(
                    lm.layers[stage.score_layer], src, cos, sin, _additive_mask(m, src.shape[1], src.dtype)
                )
                row = weights[:, :, -1, :].mean(dim=1)
                image_scores = torch.gather(row, 1, ids)
                kept = reference_topk_ascending(image_scores, stage.keep)
            index = torch.stack(
                [
                    torch.cat([torch.arange(s), s + k, torch.arange(s + n_img, h.shape[1])])
                    for s, k in zip(image_start.tolist(), kept, strict=True)
                ]
            )
            h = h[torch.arange(h.shape[0])[:, None], index]
            m = torch.gather(m, 1, index)
            if stage.positions == RENUMBERED:
                pos = (m.cumsum(-1) - 1).clamp(min=0)
                pos = pos[..., None].expand(*pos.shape, 3) if mrope else pos
            else:
                pos = pos[torch.arange(pos.shape[0])[:, None], index]
            run.kept.append(kept)
            run.scores.append(image_scores)
            n_img = stage.keep
        inputs.append(h)
        cos, sin = rotary(h, pos)
        h = layer(
            h,
            attention_mask=_additive_mask(m, h.shape[1], h.dtype),
            position_ids=layer_pos(pos),
            use_cache=True,
            position_embeddings=(cos, sin),
            **cache_kwargs(layer, cache),
        )
        layer_mask.append(m)
        layer_last.append(pos[:, -1:])
        run.positions.append(pos)
    logits = model.lm_head(lm.norm(h)[:, -1])
    run.logits.append(logits)
    ids = logits.argmax(-1)
    run.tokens = [[int(t)] for t in ids]
    for step in range(max_new_tokens - 1):
        h = step_embeds[step] if step_embeds is not None else model.get_input_embeddings()(ids[:, None])
        for i, layer in enumerate(lm.layers):
            layer_mask[i] = torch.cat([layer_mask[i], torch.ones_like(layer_mask[i][:, :1])], dim=1)
            layer_last[i] = layer_last[i] + 1
            cos, sin = rotary(h, layer_last[i])
            h = layer(
                h,
                attention_mask=_additive_mask(layer_mask[i], 1, h.dtype),
                position_ids=layer_pos(layer_last[i]),
                use_cache=True,
                position_embeddings=(cos, sin),
                **cache_kwargs(layer, cache),
            )
        logits = model.lm_head(lm.norm(h)[:, -1])
        run.logits.append(logits)
        ids = logits.argmax(-1)
        for row, t in enumerate(ids):
            run.tokens[row].append(int(t))
    run.kv_lengths = [int(cache.layers[i].keys.shape[2]) for i in range(len(lm.layers))]
    return run
