"""The generate loop every runtime shares: vision, embedding, prefill, then decode steps.

A runtime supplies ``vision``, ``embed`` and ``decoder`` callables on numpy arrays, and
``run_graph`` for any graph by name (see ``OrtGraphs``). The decoder is driven by a
``FlatDecoder`` or, for in-LLM pruning, a ``StagedDecoder`` (``runtimes/decoders.py``);
timing goes through one ``StageTimer``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from tpc.errors import UsageError
from tpc.profiling.timer import StageTimer
from tpc.runtimes.decoders import ImageGroup, image_groups, make_decoder
from tpc.runtimes.prompting import PromptBatch
from tpc.runtimes.sampling import Sampler


class GraphRunner(Protocol):
    def vision(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    def embed(self, input_ids: np.ndarray, image_features: np.ndarray) -> np.ndarray: ...
    def decoder(self, embeds, attention_mask, position_ids, past: list[np.ndarray]): ...
    def run_graph(self, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass
class Generation:
    token_ids: list[list[int]]  # generated ids only, per sample (EOS included if reached)
    kept_indices: np.ndarray | None  # [B, K] visual tokens the vision graph kept
    timings_ms: dict[str, float] = field(default_factory=dict)
    decode_steps: int = 0  # decoder calls after prefill
    decode_tokens_per_s: float = 0.0
    kv_cache_bytes: int = 0
    image_tokens: list[int] | None = None  # visual tokens per sample (bucketed artifacts may differ)
    kv_lengths: list[int] | None = None  # per decoder layer, at the end (in-LLM pruning shortens later layers)
    llm_kept_indices: np.ndarray | None = None  # [B, K'] image tokens an in-LLM method kept (of those it got)
    text: list[str] = field(default_factory=list)  # the decoded replies, per sample (CompiledModel.generate)
    crops_per_image: list[int] | None = None  # crops the vision graph ran per picture (anyres: 1 + grid)
    input_kept_indices: np.ndarray | None = None  # [B, K''] image-span rows the LLM-input selection kept (-1 pads)
    pictures: list[dict] | None = None  # grid families: each picture's size, compiled grid, resize, tokens, kept
    picture_tokens: list[list[int]] | None = None  # per sample: each of its pictures' rows into the LLM


def generate(
    graphs: GraphRunner,
    batch: PromptBatch,
    runtime: dict,
    max_new_tokens: int,
    sampler: Sampler | None = None,
    timer: StageTimer | None = None,
    stop_at_eos: bool = True,
    vision: tuple[np.ndarray, np.ndarray] | None = None,
    on_token: Callable[[int, int], bool] | None = None,
) -> Generation:
    """Generate up to ``max_new_tokens``; ``stop_at_eos=False`` always runs them all (profiling).

    ``vision``: (features, kept indices) already computed by the caller (bucketed
    artifacts run vision before tokenising); otherwise the vision graph runs here.
    ``on_token(row, token_id)`` is called for every token as it is produced (streaming);
    returning True stops that row: it gets no later tokens, as if it had reached EOS.
    """
    sampler = sampler or Sampler()
    timer = timer or StageTimer()
    b = batch.batch_size
    eos = set(runtime["eos_token_ids"]) if stop_at_eos else set()
    placeholder = np.zeros((b, 1, runtime["feature_dim"]), dtype=np.float32)
    kept = None
    if vision is not None:
        features, kept = vision
    elif batch.pixel_values is not None:
        with timer.stage("vision_ms"):
            features, kept = graphs.vision(batch.pixel_values)
    else:
        features = placeholder
    with timer.stage("embed_ms"):
        embeds = graphs.embed(batch.input_ids, features)
    mask = batch.attention_mask
    positions = prompt_positions(batch, runtime)
    input_kept = None
    if runtime.get("input_selection"):  # DART / CDPruner: shorten the prompt before the decoder
        from tpc.runtimes.input_select import select_at_input

        with timer.stage("select_input_ms"):
            embeds, mask, positions, input_kept = select_at_input(
                graphs, runtime, batch.input_ids, embeds, mask, positions, batch.image_spans
            )
    if runtime.get("llm_pruning"):
        check_pictures(runtime, [len(spans) for spans in batch.image_spans or []])
        groups = image_groups(batch.input_ids, runtime["image_token_id"])
    else:
        groups = [ImageGroup(np.arange(b), None, None)]
    decoders, first = [], np.zeros(b, dtype=np.int64)
    with timer.stage("prefill_ms"):
        for group in groups:
            rows = group.rows
            decoder = make_decoder(graphs, runtime, group.image_tokens)
            logits = decoder.prefill(embeds[rows], mask[rows], positions[rows], group.starts)
            first[rows] = sampler(logits)
            decoders.append(decoder)
    ttft = sum(
        timer.ms.get(k, 0.0) for k in ("preprocess_ms", "vision_ms", "embed_ms", "select_input_ms", "prefill_ms")
    )
    timer.add("ttft_ms", ttft)
    tokens: list[list[int]] = [[int(t)] if max_new_tokens > 0 else [] for t in first]
    stopped = np.array([bool(on_token(row, ids[0])) if on_token and ids else False for row, ids in enumerate(tokens)])
    steps = 0
    with timer.stage("decode_ms"):
        for group, decoder in zip(groups, decoders, strict=True):  # one group at a time: each has its own KV
            steps += _decode(
                graphs,
                decoder,
                runtime,
                first[group.rows],
                [tokens[r] for r in group.rows],
                max_new_tokens,
                sampler,
                eos,
                group.rows,
                stopped[group.rows],
                on_token,
            )
    decode_ms = timer.ms.setdefault("decode_ms", 0.0)
    timer.ms["decode_ms_per_token"] = decode_ms / steps if steps else 0.0
    timer.ms["total_ms"] = ttft + decode_ms
    tokens_per_s = 1e3 * steps / decode_ms if steps and decode_ms > 0 else 0.0
    return Generation(
        tokens,
        kept,
        dict(timer.ms),
        steps,
        tokens_per_s,
        sum(d.kv_bytes() for d in decoders),
        kv_lengths=[max(lengths) for lengths in zip(*(d.kv_lengths() for d in decoders), strict=True)],
        llm_kept_indices=_llm_kept(groups, decoders, b),
        input_kept_indices=input_kept,
    )


def check_pictures(runtime: dict, pictures_per_sample: list[int]) -> None:
    """In-LLM pruning drops rows of ONE image block per sample: refuse a prompt with several pictures."""
    if not runtime.get("llm_pruning"):
        return
    for row, count in enumerate(pictures_per_sample):
        if count > 1:
            raise UsageError(
                f"prompt {row} has {count} pictures; in-LLM pruning (FastV, PyramidDrop, dart-llm) takes one "
                "picture per prompt"
            )


def prompt_positions(batch: PromptBatch, runtime: dict) -> np.ndarray:
    """Position ids of a left-padded prompt: [B, S] (0, 1, ... over the real tokens), or [B, S, 3] for
    M-RoPE decoders (an image's tokens at their ORIGINAL grid positions, whatever was pruned)."""
    mask = batch.attention_mask
    if runtime.get("position_dims", 1) == 1:
        return np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int64)
    from tpc.models.qwen_geometry import mrope_positions

    grids = batch.image_grids or [[] for _ in range(batch.batch_size)]
    merge = int(runtime["image_layout"].get("merge_size", 2))
    return mrope_positions(batch.input_ids, mask, runtime["image_token_id"], grids, merge, batch.image_kept)


def _decode(
    graphs,
    decoder,
    runtime: dict,
    next_ids,
    tokens: list[list[int]],
    max_new_tokens: int,
    sampler,
    eos,
    rows: np.ndarray,
    stopped: np.ndarray,
    on_token: Callable[[int, int], bool] | None,
) -> int:
    """Decode steps of one group until every sample stopped; appends to ``tokens``; returns the steps.

    ``rows``: the group's rows of the batch (what ``on_token`` is told); ``stopped``: rows already stopped.
    """
    done = np.array([t[0] in eos if t else True for t in tokens]) | stopped
    placeholder = decode_placeholder(runtime, len(tokens))
    steps = 0
    while steps + 1 < max_new_tokens and not done.all():
        step_ids = np.where(done, runtime["pad_token_id"], next_ids).astype(np.int64)[:, None]
        logits = decoder.step(graphs.embed(step_ids, placeholder))
        next_ids = sampler(logits)
        steps += 1
        for row in np.flatnonzero(~done):
            tokens[row].append(int(next_ids[row]))
            done[row] = next_ids[row] in eos
            if on_token is not None and on_token(int(rows[row]), int(next_ids[row])):
                done[row] = True
    return steps


def decode_placeholder(runtime: dict, batch: int) -> np.ndarray:
    """The "image features" of a decode step [B,1,D]: the image token's own embedding row (artifacts record it as
    ``image_token_row``), so a GENERATED image token embeds as text, as in Hugging Face; zeros without it."""
    row = runtime.get("image_token_row")
    if row is None:
        return np.zeros((batch, 1, runtime["feature_dim"]), dtype=np.float32)
    return np.broadcast_to(np.asarray(row, dtype=np.float32), (batch, 1, row.shape[-1])).copy()


def _llm_kept(groups, decoders, b: int) -> np.ndarray | None:
    """[B, K'] image tokens the in-LLM method kept, per sample (-1 pads shorter groups' rows)."""
    kept = [(g.rows, d.kept_image_indices) for g, d in zip(groups, decoders, strict=True)]
    kept = [(rows, k) for rows, k in kept if k is not None]
    if not kept:
        return None
    out = np.full((b, max(k.shape[1] for _, k in kept)), -1, dtype=np.int64)
    for rows, k in kept:
        out[rows, : k.shape[1]] = k
    return out
