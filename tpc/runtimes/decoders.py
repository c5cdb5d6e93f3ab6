"""Decoder drivers the generate loop uses: ``prefill`` once, then ``step`` per token.

* ``FlatDecoder``: the single ``decoder`` graph (every layer, one KV length);
* ``StagedDecoder``: ``decoder_0..S`` with ``select_1..S`` between them at prefill
  (FastV, PyramidDrop, DART inside the LLM: a segment's outputs feed the selector by
  name). Each stage keeps its own 2-D mask, last position ids and past keys/values, so
  layers before a stage hold full-length KV and later layers the pruned one; decode
  steps extend every stage by one token at its own next position.

A runtime supplies ``run_graph(name, feeds) -> outputs`` (ONNX Runtime or TensorRT).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tpc.artifact_layout import segment_io, segment_name, select_name, stage_inputs
from tpc.errors import UsageError
from tpc.methods.in_llm import PruningPlan, plan_for_length


@dataclass
class ImageGroup:
    """Samples of a batch whose image blocks have one length: they share a stage selector."""

    rows: np.ndarray  # [b] sample rows of the batch
    image_tokens: int | None  # image tokens per sample (None: no image)
    starts: np.ndarray | None  # [b] first image position per row


def image_groups(input_ids: np.ndarray, image_token_id: int) -> list[ImageGroup]:
    """The batch split by image-block length (one group when every sample has the same one).

    The staged graphs drop a fixed number of image rows from one contiguous block, so samples
    whose blocks differ in length (pictures of different crop grids, different buckets) prefill
    and decode as separate groups.
    """
    is_image = input_ids == image_token_id
    counts = is_image.sum(axis=1)
    starts = is_image.argmax(axis=1).astype(np.int64)
    for row, (start, count) in enumerate(zip(starts, counts, strict=True)):
        if count and not is_image[row, start : start + count].all():
            raise UsageError(f"sample {row}: its image tokens are not one contiguous block; in-LLM pruning needs one")
    groups = []
    for count in sorted(set(counts.tolist())):
        rows = np.flatnonzero(counts == count)
        groups.append(ImageGroup(rows, int(count) or None, starts[rows] if count else None))
    return groups


class FlatDecoder:
    """The single decoder graph. A runtime whose ``decoder_kv`` is set (ONNX Runtime on CPU) keeps the KV
    cache in its own tensors between steps; otherwise ``decoder`` round-trips it through numpy."""

    def __init__(self, graphs, runtime: dict):
        self.graphs = graphs
        self.runtime = runtime
        self.past: list = []  # numpy arrays, or the runtime's own tensors (decoder_kv)
        self.kept_image_indices = None
        self._run = getattr(graphs, "decoder_kv", None) or graphs.decoder

    def prefill(self, embeds, mask, positions, image_start=None) -> np.ndarray:
        rt = self.runtime
        past = [
            np.zeros((embeds.shape[0], rt["num_kv_heads"], 0, rt["head_dim"]), np.float32)
            for _ in range(2 * rt["num_layers"])
        ]
        self.mask, self.last = mask, positions[:, -1:]
        logits, self.past = self._run(embeds, mask, positions, past)
        return logits

    def step(self, embeds) -> np.ndarray:
        self.mask = np.concatenate([self.mask, np.ones((self.mask.shape[0], 1), np.int64)], axis=1)
        self.last = self.last + 1
        logits, self.past = self._run(embeds, self.mask, self.last, self.past)
        return logits

    def kv_lengths(self) -> list[int]:
        return [int(_shape(p)[2]) for p in self.past[::2]]

    def kv_bytes(self) -> int:
        return int(sum(p.nbytes if isinstance(p, np.ndarray) else 4 * int(np.prod(_shape(p))) for p in self.past))


def _shape(value) -> tuple[int, ...]:
    """A numpy array's shape, or an OrtValue's (a method there)."""
    return tuple(value.shape) if isinstance(value, np.ndarray) else tuple(value.shape())


@dataclass
class _StageState:
    mask: np.ndarray  # [B, P_s] keys this stage's layers hold (1 = real token)
    last: np.ndarray  # [B, 1] position id of the newest token in this stage
    past: list[np.ndarray]


class StagedDecoder:
    def __init__(self, graphs, runtime: dict, plan: PruningPlan, bucket: int | None = None):
        self.graphs = graphs
        self.runtime = runtime
        self.plan = plan
        self.bucket = bucket  # the selectors of this bucket (bucketed artifacts)
        # selectors for blocks of any length take the block length and kept count as input lengths
        self.dynamic = bool(runtime.get("llm_pruning_rule"))
        self.io = [segment_io(plan, i) for i in range(len(plan.segments()))]
        self.states: list[_StageState] = []
        self.kept_image_indices: np.ndarray | None = None  # [B, keep of last stage], of the decoder's image tokens
        self.stage_kept: list[np.ndarray] = []  # per stage: kept rows of that stage's input image block
        self.stage_positions: list[np.ndarray] = []  # per segment: prefill position ids its layers saw

    def _run_segment(self, index: int, hidden, mask, positions, past) -> tuple[list[np.ndarray], list[np.ndarray]]:
        inputs, outputs = self.io[index]
        feeds = {inputs[0]: hidden, "attention_mask": mask, "position_ids": positions}
        feeds.update(zip(inputs[3:], past, strict=True))
        values = self.graphs.run_graph(segment_name(index), feeds)
        heads = len(outputs) - len(inputs[3:])
        return values[:heads], values[heads:]

    def prefill(self, embeds, mask, positions, image_start=None) -> np.ndarray:
        rt = self.runtime
        b = embeds.shape[0]
        hidden = embeds
        original = np.broadcast_to(np.arange(self.plan.image_tokens), (b, self.plan.image_tokens))
        self.states, self.stage_kept, self.stage_positions = [], [], []
        for index, (start, end) in enumerate(self.plan.segments()):
            empty = [np.zeros((b, rt["num_kv_heads"], 0, rt["head_dim"]), np.float32) for _ in range(2 * (end - start))]
            heads, present = self._run_segment(index, hidden, mask, positions, empty)
            self.stage_positions.append(positions)
            self.states.append(_StageState(mask, positions[:, -1:], present))
            if index == len(self.plan.stages):
                self.kept_image_indices = original if image_start is not None else None
                return heads[0]
            outputs = self.io[index][1][: len(heads)]  # hidden, score (and DART's normed_hidden)
            hidden = heads[0]
            if image_start is not None:
                feeds = dict(zip(outputs, heads, strict=True))
                feeds.update(position_ids=positions, attention_mask=mask, image_start=image_start)
                if self.dynamic:
                    feeds["image_rows"] = np.arange(stage_inputs(self.plan, index + 1), dtype=np.int64)
                    feeds["keep_rows"] = np.arange(self.plan.stages[index].keep, dtype=np.int64)
                hidden, positions, mask, kept = self.graphs.run_graph(select_name(index + 1, self.bucket), feeds)
                self.stage_kept.append(kept)
                original = np.take_along_axis(original, kept.astype(np.int64), axis=1)
        raise AssertionError("unreachable: the last segment returns the logits")

    def step(self, embeds) -> np.ndarray:
        hidden = embeds
        for index, state in enumerate(self.states):
            state.mask = np.concatenate([state.mask, np.ones((state.mask.shape[0], 1), np.int64)], axis=1)
            state.last = state.last + 1
            heads, state.past = self._run_segment(index, hidden, state.mask, state.last, state.past)
            hidden = heads[0]
        return hidden

    def kv_lengths(self) -> list[int]:
        return [int(p.shape[2]) for state in self.states for p in state.past[::2]]

    def kv_bytes(self) -> int:
        return int(sum(p.nbytes for state in self.states for p in state.past))


def llm_plan_for(runtime: dict, image_tokens: int | None) -> tuple[PruningPlan, int | None]:
    """The in-LLM plan (and selector key) for prompts carrying ``image_tokens`` image tokens.

    ``llm_pruning_buckets`` keys the plans by image-block length (buckets, crop grids). Without
    an image no selector runs, so the default plan serves.
    """
    rule = runtime.get("llm_pruning_rule")
    if rule and image_tokens is not None:  # one selector per stage serves every block length
        return plan_for_length(rule, runtime["num_layers"], image_tokens), None
    per_length = runtime.get("llm_pruning_buckets")
    if not per_length or image_tokens is None:
        plan = PruningPlan.from_dict(runtime["llm_pruning"])
        if image_tokens is not None and image_tokens != plan.image_tokens:
            raise UsageError(
                f"the prompt has {image_tokens} image tokens; this artifact prunes inside the LLM "
                f"and needs one contiguous block of {plan.image_tokens}"
            )
        return plan, None
    if str(image_tokens) not in per_length:
        raise UsageError(
            f"the prompt has {image_tokens} image tokens; this artifact's in-LLM selectors take image blocks of "
            f"{', '.join(per_length)} tokens"
        )
    return PruningPlan.from_dict(per_length[str(image_tokens)]), image_tokens


def make_decoder(graphs, runtime: dict, image_tokens: int | None = None):
    if runtime.get("llm_pruning"):
        plan, bucket = llm_plan_for(runtime, image_tokens)
        return StagedDecoder(graphs, runtime, plan, bucket)
    return FlatDecoder(graphs, runtime)
