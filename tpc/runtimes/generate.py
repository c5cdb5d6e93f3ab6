"""The generate loop every runtime shares: vision, embedding, prefill, then decode steps.

A runtime supplies ``vision``, ``embed`` and ``decoder`` callables on numpy arrays, and
``run_graph`` for any graph by name (see ``OrtGraphs``). The decoder is driven by a
``FlatDecoder`` or, for in-LLM pruning, a ``StagedDecoder`` (``runtimes/decoders.py``);
timing goes through one ``StageTimer``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from tpc.profiling.timer import StageTimer
from tpc.runtimes.decoders import image_block, make_decoder
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


def generate(
    graphs: GraphRunner,
    batch: PromptBatch,
    runtime: dict,
    max_new_tokens: int,
    sampler: Sampler | None = None,
    timer: StageTimer | None = None,
    stop_at_eos: bool = True,
    vision: tuple[np.ndarray, np.ndarray] | None = None,
) -> Generation:
    """Generate up to ``max_new_tokens``; ``stop_at_eos=False`` always runs them all (profiling).

    ``vision``: (features, kept indices) already computed by the caller (bucketed
    artifacts run vision before tokenising); otherwise the vision graph runs here.
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
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int64)
    image_tokens, image_start = None, None
    if runtime.get("llm_pruning"):
        image_tokens, image_start = image_block(batch.input_ids, runtime["image_token_id"])
    decoder = make_decoder(graphs, runtime, image_tokens)
    with timer.stage("prefill_ms"):
        logits = decoder.prefill(embeds, mask, positions, image_start)
        next_ids = sampler(logits)
    ttft = sum(timer.ms.get(k, 0.0) for k in ("preprocess_ms", "vision_ms", "embed_ms", "prefill_ms"))
    timer.add("ttft_ms", ttft)
    tokens = [[int(t)] for t in next_ids] if max_new_tokens > 0 else [[] for _ in range(b)]
    done = np.array([t[0] in eos if t else True for t in tokens])
    steps = 0
    with timer.stage("decode_ms"):
        while steps + 1 < max_new_tokens and not done.all():
            step_ids = np.where(done, runtime["pad_token_id"], next_ids).astype(np.int64)[:, None]
            embeds = graphs.embed(step_ids, placeholder)
            logits = decoder.step(embeds)
            next_ids = sampler(logits)
            steps += 1
            for row in np.flatnonzero(~done):
                tokens[row].append(int(next_ids[row]))
                done[row] = next_ids[row] in eos
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
        decoder.kv_bytes(),
        kv_lengths=decoder.kv_lengths(),
        llm_kept_indices=decoder.kept_image_indices,
    )
