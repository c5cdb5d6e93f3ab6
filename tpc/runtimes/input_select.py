"""Selection at the LLM input at run time: the ``select_input`` graphs between ``embed`` and the decoder.

Samples are grouped by image-span length (``image_groups``): each group runs the selector
compiled for its length; a sample without an image keeps every row. The shortened rows
of the groups are then left-padded to one length (mask 0, position 0, zero embeddings),
the batch layout the decoder already takes. Positions are the ORIGINAL ones, so decoding
continues after the unpruned length (the decoder steps on from ``positions[:, -1:]``).
"""

from __future__ import annotations

import numpy as np

from tpc.errors import UsageError
from tpc.runtimes.decoders import image_groups


def text_rows(input_ids: np.ndarray, mask: np.ndarray, image_token_id: int) -> np.ndarray:
    """[B,T] int64: 1 for a real prompt token that is neither an image row nor padding."""
    return ((input_ids != image_token_id) & (mask != 0)).astype(np.int64)


def select_at_input(graphs, runtime: dict, input_ids, embeds, mask, positions):
    """(embeds, mask, positions, kept) after the LLM-input selection; kept [B,K] padded with -1, or
    None when no sample has an image."""
    spans = runtime["input_selection"]["spans"]
    text_mask = text_rows(input_ids, mask, runtime["image_token_id"])
    b = embeds.shape[0]
    parts: list = [None] * b
    kept_rows: dict[int, np.ndarray] = {}
    for group in image_groups(input_ids, runtime["image_token_id"]):
        rows = group.rows
        if group.image_tokens is None:
            for row in rows:
                parts[row] = (embeds[row], mask[row], positions[row])
            continue
        span, extra = spans.get(str(group.image_tokens)), {}
        any_length = runtime["input_selection"].get("any_length")
        if span is None and any_length is not None:  # DART on a span of any length: n and the quota as lengths
            from tpc.methods.llm_input import input_keep

            span = any_length
            quota = input_keep(group.image_tokens, runtime["input_selection"]["ratio"])
            extra = {"image_rows": np.arange(group.image_tokens), "keep_rows": np.arange(quota)}
        if span is None:
            raise UsageError(
                f"the prompt has {group.image_tokens} image tokens; this artifact's LLM-input selectors take "
                f"image spans of {', '.join(spans)} tokens"
            )
        feeds = {
            "inputs_embeds": np.ascontiguousarray(embeds[rows]),
            "attention_mask": np.ascontiguousarray(mask[rows]),
            "position_ids": np.ascontiguousarray(positions[rows]),
            "image_start": group.starts.astype(np.int64),
            "text_mask": np.ascontiguousarray(text_mask[rows]),
            **extra,
        }
        out_embeds, out_positions, out_mask, kept = graphs.run_graph(span["graph"], feeds)
        for i, row in enumerate(rows):
            parts[row] = (out_embeds[i], out_mask[i], out_positions[i])
            kept_rows[int(row)] = np.asarray(kept[i], dtype=np.int64)
    length = max(part[0].shape[0] for part in parts)
    new_embeds = np.zeros((b, length, embeds.shape[-1]), dtype=embeds.dtype)
    new_mask = np.zeros((b, length), dtype=np.int64)
    new_positions = np.zeros((b, length, *positions.shape[2:]), dtype=np.int64)  # M-RoPE: [B, T, 3]
    for row, (e, m, p) in enumerate(parts):
        new_embeds[row, length - e.shape[0] :] = e
        new_mask[row, length - e.shape[0] :] = m
        new_positions[row, length - e.shape[0] :] = p
    kept_out = None
    if kept_rows:
        kept_out = np.full((b, max(k.shape[0] for k in kept_rows.values())), -1, dtype=np.int64)
        for row, k in kept_rows.items():
            kept_out[row, : k.shape[0]] = k
    return new_embeds, new_mask, new_positions, kept_out
