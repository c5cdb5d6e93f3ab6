"""Selection at the LLM input at run time: the ``select_input`` graphs between ``embed`` and the decoder.

Every picture's image span keeps its own quota (METHODS.md): a prompt with several pictures
runs the selector once per span, from the last span back (the earlier spans' rows do not
move), each round batching the samples whose span at that place has one length and running
the selector compiled for that length (or the any-length selector, which takes the length
and the quota as input lengths); a sample without an image keeps every row. The shortened
rows are then left-padded to one length (mask 0, position 0, zero embeddings), the batch
layout the decoder already takes. Positions are the ORIGINAL ones, so decoding continues
after the unpruned length (the decoder steps on from ``positions[:, -1:]``).
"""

from __future__ import annotations

import numpy as np

from tpc.errors import UsageError


def text_rows(input_ids: np.ndarray, mask: np.ndarray, image_token_id: int) -> np.ndarray:
    """[B,T] int64: 1 for a real prompt token that is neither an image row nor padding."""
    return ((input_ids != image_token_id) & (mask != 0)).astype(np.int64)


def select_at_input(graphs, runtime: dict, input_ids, embeds, mask, positions, spans=None):
    """(embeds, mask, positions, kept) after the LLM-input selection; kept [B,K]: per sample, the kept rows of
    its image rows (its pictures' spans one after another), padded with -1; None when no sample has an image.

    ``spans``: per sample, each picture's (first row, rows) (``PromptBatch.image_spans``); None: each sample's
    image tokens are one span. Every span keeps its own quota; the text rows (every real row that is not an
    image row, of any picture) are the prompt the methods read. Spans are selected from the LAST one back,
    so the first rows of the earlier spans do not move; each round batches the samples whose span at that
    place has one length."""
    image_token_id = runtime["image_token_id"]
    if spans is None:
        spans = [_one_span(ids, image_token_id) for ids in input_ids]
    samples = [
        _Sample(embeds[b], mask[b], positions[b], input_ids[b] == image_token_id, list(spans[b]))
        for b in range(embeds.shape[0])
    ]
    for round_ in range(max((len(s.spans) for s in samples), default=0)):
        todo = [s for s in samples if len(s.spans) > round_]
        by_length: dict[int, list[_Sample]] = {}
        for sample in todo:
            by_length.setdefault(sample.spans[-1 - round_][1], []).append(sample)
        for length, group in by_length.items():
            _select_group(graphs, runtime, group, length, round_)
    length = max(s.embeds.shape[0] for s in samples)
    b = len(samples)
    new_embeds = np.zeros((b, length, embeds.shape[-1]), dtype=embeds.dtype)
    new_mask = np.zeros((b, length), dtype=np.int64)
    new_positions = np.zeros((b, length, *positions.shape[2:]), dtype=np.int64)  # M-RoPE: [B, T, 3]
    for row, sample in enumerate(samples):
        n = sample.embeds.shape[0]
        new_embeds[row, length - n :] = sample.embeds
        new_mask[row, length - n :] = sample.mask
        new_positions[row, length - n :] = sample.positions
    kept = [s.kept_rows() for s in samples]
    if not any(k is not None for k in kept):
        return new_embeds, new_mask, new_positions, None
    kept_out = np.full((b, max(len(k) for k in kept if k is not None)), -1, dtype=np.int64)
    for row, k in enumerate(kept):
        if k is not None:
            kept_out[row, : len(k)] = k
    return new_embeds, new_mask, new_positions, kept_out


class _Sample:
    """One sample's rows while its spans are selected (left padding included)."""

    def __init__(self, embeds, mask, positions, is_image, spans):
        self.embeds, self.mask, self.positions, self.is_image = embeds, mask, positions, is_image
        self.spans = spans  # (first row, rows) of each picture, in the current rows
        self.lengths = [n for _, n in spans]  # each span's rows before selection
        self.kept: dict[int, np.ndarray] = {}  # span number -> kept rows of that span

    def kept_rows(self) -> np.ndarray | None:
        """The kept rows of every span, numbered over the sample's image rows (spans one after another)."""
        if not self.spans:
            return None
        offsets = np.cumsum([0] + self.lengths[:-1])
        return np.concatenate([self.kept[i] + offsets[i] for i in range(len(self.spans))]).astype(np.int64)


def _select_group(graphs, runtime: dict, group: list[_Sample], length: int, round_: int) -> None:
    """Run the selector for spans of ``length`` rows on the group's span ``-1 - round_`` (batched)."""
    selection = runtime["input_selection"]
    span, extra = selection["spans"].get(str(length)), {}
    if span is None and selection.get("any_length") is not None:  # a span of any length: n and quota as lengths
        from tpc.methods.llm_input import input_keep

        span = selection["any_length"]
        extra = {"image_rows": np.arange(length), "keep_rows": np.arange(input_keep(length, selection["ratio"]))}
    if span is None:
        raise UsageError(
            f"a picture gives {length} image tokens; this artifact's LLM-input selectors take image spans of "
            f"{', '.join(selection['spans'])} tokens"
        )
    longest = max(s.embeds.shape[0] for s in group)
    pads = [longest - s.embeds.shape[0] for s in group]
    index = [len(s.spans) - 1 - round_ for s in group]
    feeds = {
        "inputs_embeds": np.stack([_pad(s.embeds, p) for s, p in zip(group, pads, strict=True)]),
        "attention_mask": np.stack([_pad(s.mask, p) for s, p in zip(group, pads, strict=True)]),
        "position_ids": np.stack([_pad(s.positions, p) for s, p in zip(group, pads, strict=True)]),
        "image_start": np.array([s.spans[i][0] + p for s, i, p in zip(group, index, pads, strict=True)], np.int64),
        "text_mask": np.stack(
            [_pad((~s.is_image & (s.mask != 0)).astype(np.int64), p) for s, p in zip(group, pads, strict=True)]
        ),
        **extra,
    }
    out_embeds, out_positions, out_mask, kept = graphs.run_graph(span["graph"], feeds)
    for j, (sample, pad, i) in enumerate(zip(group, pads, index, strict=True)):
        start = sample.spans[i][0]
        picks = np.asarray(kept[j], dtype=np.int64)
        rows = np.concatenate([np.arange(start), start + picks, np.arange(start + length, sample.embeds.shape[0])])
        sample.embeds, sample.mask, sample.positions = out_embeds[j, pad:], out_mask[j, pad:], out_positions[j, pad:]
        sample.is_image = sample.is_image[rows]
        sample.kept[i] = picks
        sample.spans[i] = (start, len(picks))


def _pad(values: np.ndarray, pad: int) -> np.ndarray:
    """``values`` with ``pad`` zero rows in front (left padding)."""
    if not pad:
        return values
    return np.concatenate([np.zeros((pad, *values.shape[1:]), dtype=values.dtype), values])


def _one_span(ids: np.ndarray, image_token_id: int) -> list[tuple[int, int]]:
    """A sample's image tokens as one span (callers without per-picture spans), or none."""
    rows = np.flatnonzero(ids == image_token_id)
    if len(rows) and rows[-1] - rows[0] + 1 != len(rows):
        raise UsageError("a prompt's image tokens are not one contiguous block; give the pictures' spans")
    return [(int(rows[0]), len(rows))] if len(rows) else []
