"""The LLaVA language model cut at in-LLM pruning stages, for export.

``DecoderSegment`` runs decoder layers [start, end) of Hugging Face's own Llama layers
on a flat per-layer KV cache. Each segment serves prefill and decode, so every weight
is exported once. A segment that ends at a pruning stage also outputs the last prompt
token's attention to every position, recomputed from the scoring layer's own q/k after
RoPE (one query row, no T x T matrix). ``StageSelect`` is the weightless graph between
two segments that keeps the top image tokens plus all text tokens, at prefill only.

DART inside the LLM (``score="key_norm"``): the segment's ``score`` is instead the L1 norm of
the scoring layer's own post-RoPE keys (the ones its attention caches; all KV heads
concatenated, so the sum over heads of the per-head L1 norms), and it also outputs the
hidden states it hands on after the model's final RMSNorm (``normed_hidden``: DART's
cosines are taken there; the norm's weight, one vector, is the only weight stored twice).
``DartStageSelect`` runs DART's greedy (``tpc.methods.dart``) on the image block.
"""

from __future__ import annotations

import torch
from torch import nn

from tpc.methods.selection import topk_ascending
from tpc.models.decoder_common import cache_kwargs, causal_padding_mask


class SegmentCache:
    """What HF attention needs of a cache: ``update`` appends this step's keys/values."""

    def __init__(self, past: dict[int, tuple[torch.Tensor, torch.Tensor]]):
        self.past = past
        self.present: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, key, value, layer_idx, *args, **kwargs):
        past_key, past_value = self.past[layer_idx]
        key = torch.cat([past_key, key], dim=2)
        value = torch.cat([past_value, value], dim=2)
        self.present[layer_idx] = (key, value)
        return key, value


def last_token_attention(
    layer: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_mask: torch.Tensor
) -> torch.Tensor:
    """[B,T]: softmax of the last position's query against all T keys of ``layer``, mean over heads; in
    fp32 inside half-precision graphs (the score decides the kept set).

    ``hidden`` is the layer's input; q/k come from its own input norm and projections with
    RoPE at the positions ``cos``/``sin`` were built for; padding keys are masked.
    """
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    b, t, _ = x.shape
    hd = attn.head_dim
    q = attn.q_proj(x[:, -1:]).view(b, 1, -1, hd).transpose(1, 2)
    k = attn.k_proj(x).view(b, t, -1, hd).transpose(1, 2)
    q, _ = apply_rotary_pos_emb(q, q, cos[:, -1:], sin[:, -1:])
    k, _ = apply_rotary_pos_emb(k, k, cos, sin)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)).squeeze(2) * attn.scaling  # [B,H,T], fp32
    logits = logits.masked_fill(key_mask[:, None, :] == 0, torch.finfo(logits.dtype).min)
    return logits.softmax(dim=-1).mean(dim=1)


class DecoderSegment(nn.Module):
    """Decoder layers [start, end); the last segment adds the final norm and the LM head."""

    def __init__(self, model, start: int, end: int, score_layer: int | None, score: str = "attention"):
        """``score``: ``attention`` (the last prompt token's attention, FastV/PyramidDrop) or ``key_norm``
        (DART: the L1 norm of ``score_layer``'s own keys, a layer of this segment, plus the final-normed
        hidden states)."""
        super().__init__()
        lm = model.model.language_model
        self.start, self.end = start, end
        self.layers = nn.ModuleList(lm.layers[start:end])
        self.rotary_emb = lm.rotary_emb
        self.final = end == len(lm.layers)
        self.score_layer = score_layer
        self.score = score
        if score not in ("attention", "key_norm"):
            raise ValueError(f"unknown segment score {score!r}")
        if score_layer is not None:
            last = end if score == "attention" else end - 1  # key norms: the layer runs in this segment
            if self.final or not start <= score_layer <= last:
                raise ValueError(f"score layer {score_layer} is not scorable from segment [{start}, {end})")
            if score == "key_norm":  # the keys come from the cache; the cosines need the final norm
                self.final_norm = lm.norm
            else:
                self.scorer = lm.layers[score_layer]
        if self.final:
            self.norm = lm.norm
            self.lm_head = model.lm_head

    def forward(self, hidden, attention_mask, position_ids, past):
        seq = hidden.shape[1]
        mask = causal_padding_mask(attention_mask, seq, hidden.dtype)
        mrope = position_ids.dim() == 3  # M-RoPE (t, h, w) [B, S, 3]: the rotary takes [3, B, S]
        cos, sin = self.rotary_emb(hidden, position_ids.permute(2, 0, 1) if mrope else position_ids)
        layer_positions = None if mrope else position_ids
        cache = SegmentCache({self.start + n: (past[2 * n], past[2 * n + 1]) for n in range(len(self.layers))})
        score_input = None
        for n, layer in enumerate(self.layers):
            if self.start + n == self.score_layer:
                score_input = hidden
            hidden = layer(
                hidden,
                attention_mask=mask,
                position_ids=layer_positions,
                use_cache=True,
                position_embeddings=(cos, sin),
                **cache_kwargs(layer, cache),
            )
        present = []
        for n in range(len(self.layers)):
            present += list(cache.present[self.start + n])
        if self.final:
            return (self.lm_head(self.norm(hidden[:, -1, :])), *present)
        if self.score_layer is None:
            return (hidden, *present)
        if self.score == "key_norm":  # this step's post-RoPE keys, as the scoring layer cached them
            keys = cache.present[self.score_layer][0][:, :, -seq:].float()  # [B, KV heads, seq, head_dim]
            score = keys.abs().sum(dim=-1).sum(dim=1)  # L1 over the heads' concatenation -> [B, seq]
            return (hidden, score, self.final_norm(hidden), *present)
        if score_input is None:  # the next segment's first layer scores (PyramidDrop)
            score_input = hidden
        score = last_token_attention(self.scorer, score_input, cos, sin, attention_mask[:, -seq:])
        return (hidden, score, *present)


def stage_index(image_start: torch.Tensor, kept: torch.Tensor, seq: int, dropped: int) -> torch.Tensor:
    """Row index [B, seq - dropped] of the survivors: text before the image, kept image, text after.

    Built with element-wise selects only (no NonZero, no data-dependent shapes).
    """
    keep = kept.shape[1]
    j = torch.arange(seq - dropped, device=kept.device)[None, :]
    start = image_start[:, None]
    inside = torch.gather(kept, 1, (j - start).clamp(min=0, max=keep - 1))
    return torch.where(j < start, j, torch.where(j < start + keep, start + inside, j + dropped))


class StageSelect(nn.Module):
    """Keep the top ``keep`` of the ``image_tokens`` image rows by score, plus every text row."""

    def __init__(self, image_tokens: int, keep: int, renumber: bool):
        super().__init__()
        self.image_tokens, self.keep, self.renumber = image_tokens, keep, renumber

    def forward(self, hidden, score, position_ids, attention_mask, image_start):
        offsets = torch.arange(self.image_tokens, device=score.device)
        return select_rows(hidden, score, position_ids, attention_mask, image_start, offsets, self.keep, self.renumber)


class DynamicStageSelect(nn.Module):
    """``StageSelect`` for image blocks of any length: the block length and the kept count come from
    the lengths of ``image_rows`` (= arange(n)) and ``keep_rows`` (= arange(keep)) at run time."""

    def __init__(self, renumber: bool):
        super().__init__()
        self.renumber = renumber

    def forward(self, hidden, score, position_ids, attention_mask, image_start, image_rows, keep_rows):
        keep = keep_rows.shape[0]
        return select_rows(hidden, score, position_ids, attention_mask, image_start, image_rows, keep, self.renumber)


def select_rows(hidden, score, position_ids, attention_mask, image_start, offsets, keep, renumber: bool):
    """The survivors of one stage: top ``keep`` image rows (ascending, ties to the lower index) + every text row."""
    rows = image_start[:, None] + offsets[None, :]
    kept = topk_ascending(torch.gather(score, 1, rows), keep)
    return gather_survivors(hidden, position_ids, attention_mask, image_start, kept, offsets.shape[0], renumber)


def gather_survivors(hidden, position_ids, attention_mask, image_start, kept, image_tokens, renumber: bool):
    """Rows ``kept`` [B,keep] (ascending, of the ``image_tokens`` image rows) + every text row: the
    shortened hidden states, their positions (gathered, or renumbered over the mask), mask and ``kept``."""
    keep = kept.shape[1]
    index = stage_index(image_start, kept, hidden.shape[1], image_tokens - keep)
    hidden = torch.gather(hidden, 1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    mask = torch.gather(attention_mask, 1, index)
    if renumber:  # M-RoPE: t = h = w, as for text
        positions = (torch.cumsum(mask, dim=1) - 1).clamp(min=0)
        if position_ids.dim() == 3:
            positions = positions.unsqueeze(-1).expand(-1, -1, position_ids.shape[-1])
    elif position_ids.dim() == 3:  # M-RoPE: every kept row keeps its (t, h, w)
        positions = torch.gather(position_ids, 1, index.unsqueeze(-1).expand(-1, -1, position_ids.shape[-1]))
    else:
        positions = torch.gather(position_ids, 1, index)
    return hidden, positions, mask, kept


def dart_image_inputs(score, normed_hidden, attention_mask, image_start, offsets):
    """DART's inputs for the image block at ``image_start + offsets``: the block's normed rows [B,n,D] and key
    norms [B,n], and the text mask [B,T] (rows outside the block that are not padding), all fp32."""
    rows = image_start[:, None] + offsets[None, :]
    normed = normed_hidden.float()
    image = torch.gather(normed, 1, rows.unsqueeze(-1).expand(-1, -1, normed.shape[-1]))
    t = torch.arange(attention_mask.shape[1], device=attention_mask.device)[None, :]
    start = image_start[:, None]
    outside = (t < start) | (t >= start + offsets.shape[0])
    text_mask = outside & (attention_mask != 0)
    return image, torch.gather(score.float(), 1, rows), normed, text_mask


class DartStageSelect(nn.Module):
    """DART inside the LLM: keep ``keep`` of the ``image_tokens`` image rows, least duplicated by the pivots
    (largest key L1 ``score``; cosine on ``normed_hidden``), plus every text row; positions gathered."""

    def __init__(self, image_tokens: int, keep: int, image_pivots: int, text_pivots: int):
        super().__init__()
        self.image_tokens, self.keep = image_tokens, keep
        self.image_pivots, self.text_pivots = image_pivots, text_pivots

    def forward(self, hidden, score, position_ids, attention_mask, image_start, normed_hidden):
        from tpc.methods.dart import dart_select

        offsets = torch.arange(self.image_tokens, device=score.device)
        inputs = dart_image_inputs(score, normed_hidden, attention_mask, image_start, offsets)
        image, image_key, text, text_mask = inputs
        kept = dart_select(
            image, text, text_mask, self.keep, self.image_pivots, self.text_pivots, image_key, score.float()
        )
        return gather_survivors(hidden, position_ids, attention_mask, image_start, kept, self.image_tokens, False)


class DynamicDartStageSelect(nn.Module):
    """``DartStageSelect`` for image blocks of any length: the block length and the quota come from the
    lengths of ``image_rows`` (= arange(n)) and ``keep_rows`` (= arange(keep)) at run time."""

    def __init__(self, image_pivots: int, text_pivots: int):
        super().__init__()
        self.image_pivots, self.text_pivots = image_pivots, text_pivots

    def forward(self, hidden, score, position_ids, attention_mask, image_start, image_rows, keep_rows, normed_hidden):
        from tpc.methods.dart import dart_select_any_length

        image, image_key, text, text_mask = dart_image_inputs(
            score, normed_hidden, attention_mask, image_start, image_rows
        )
        kept = dart_select_any_length(
            image, text, text_mask, keep_rows, self.image_pivots, self.text_pivots, image_key, score.float()
        )
        return gather_survivors(hidden, position_ids, attention_mask, image_start, kept, image_rows.shape[0], False)
