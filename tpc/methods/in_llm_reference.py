"""Eager PyTorch reference of in-LLM pruning, applied inside Hugging Face's Llama layers.

Written independently of the exported segments: the score comes from the FULL eager
attention matrix of the scoring layer (softmax(QK^T * scale + mask), then its last row),
the survivors are picked by a stable sort, the mask is built with ``tril``, and HF's
``DynamicCache`` holds the per-layer keys/values (so its per-layer lengths are what the
rule produced). Greedy decoding continues with per-layer masks and positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tpc.methods.in_llm import RENUMBERED, PruningPlan
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
            weights = _attention_weights(
                lm.layers[stage.score_layer], src, cos, sin, _additive_mask(m, src.shape[1], src.dtype)
            )
            row = weights[:, :, -1, :].mean(dim=1)
            ids = image_start[:, None] + torch.arange(n_img)[None]
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
