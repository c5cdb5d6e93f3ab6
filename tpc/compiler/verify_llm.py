"""Parity of the staged decoder graphs (FastV, PyramidDrop, DART) with the eager reference.

For batch 1 and a left-padded batch 2 with an image block at different offsets: the
image tokens each stage keeps (identical, or different only between tied scores; DART's
greedy: identical), the logits of prefill and of every decode step, greedy ids, the
position ids each segment saw, and the per-layer KV lengths (full before the first stage,
pruned after).
"""

from __future__ import annotations

import numpy as np
import torch

from tpc.compiler.parity import close, compare_indices
from tpc.methods.in_llm import DART, RENUMBERED, PruningPlan
from tpc.methods.in_llm_reference import reference_dart_stage, reference_generate
from tpc.methods.selection import reference_topk_ascending


def expected_kv_lengths(plan: PruningPlan, prompt_len: int, steps: int) -> list[int]:
    return [prompt_len - (plan.image_tokens - kept) + steps for kept in plan.layer_keep()]


def staged_check_inputs(adapter, plan: PruningPlan, batch: int, seed: int, steps: int):
    """Seeded inputs of a staged decoder check: (embeds, mask, image_start, step_embeds, positions), a prompt of
    the plan's image block + 9 text rows, the block at 3 (and 5), the second sample left-padded by 2."""
    hidden = adapter.text.hidden_size
    generator = torch.Generator().manual_seed(seed + batch)
    prompt_len = plan.image_tokens + 9
    embeds = torch.randn(batch, prompt_len, hidden, generator=generator) * 0.5
    mask = torch.ones(batch, prompt_len, dtype=torch.int64)
    image_start = torch.tensor([3, 5][:batch], dtype=torch.int64)
    if batch == 2:
        mask[1, :2] = 0  # left padding on the second sample
    step_embeds = [torch.randn(batch, 1, hidden, generator=generator) * 0.5 for _ in range(steps)]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    if adapter.text.position_dims == 3:
        positions = grid_positions(mask, image_start, plan.image_tokens)
    return embeds, mask, image_start, step_embeds, positions


@torch.no_grad()
def verify_staged_decoder(
    graphs, adapter, plan: PruningPlan, runtime: dict, seed: int = 3, steps: int = 2, bucket: int | None = None
) -> list[dict]:
    from tpc.runtimes.decoders import StagedDecoder

    results = []
    for batch in (1, 2):
        embeds, mask, image_start, step_embeds, positions = staged_check_inputs(adapter, plan, batch, seed, steps)
        prompt_len = embeds.shape[1]
        ref = reference_generate(adapter.model, embeds, mask, image_start, plan, steps + 1, step_embeds, positions)

        decoder = StagedDecoder(graphs, runtime, plan, bucket)
        logits = [decoder.prefill(embeds.numpy(), mask.numpy(), positions.numpy(), image_start.numpy())]
        logits += [decoder.step(e.numpy()) for e in step_embeds]

        verdicts = [  # DART's greedy has no tie-equivalent sets: its kept indices must be equal
            compare_indices(got, want.numpy(), None if stage.rule == DART else score.numpy())
            for got, want, score, stage in zip(decoder.stage_kept, ref.kept, ref.scores, plan.stages, strict=True)
        ]
        worst, ok = 0.0, True
        for got, want in zip(logits, ref.logits, strict=True):
            good, diff = close(got, want.numpy())
            worst, ok = max(worst, diff), ok and good
        greedy = all(
            np.array_equal(got.argmax(-1), want.numpy().argmax(-1))
            for got, want in zip(logits, ref.logits, strict=True)
        )
        firsts = [start for start, _ in plan.segments()]
        positions_ok = all(
            np.array_equal(decoder.stage_positions[s], ref.positions[first].numpy()) for s, first in enumerate(firsts)
        )
        if any(stage.positions == RENUMBERED for stage in plan.stages):
            last = decoder.stage_positions[-1]
            positions_ok &= bool(np.all(np.diff(last[:, -plan.stages[-1].keep - 1 :], axis=1) == 1))
        kv = decoder.kv_lengths()
        kv_ok = kv == ref.kv_lengths == expected_kv_lengths(plan, prompt_len, steps)
        results.append(
            {
                "method": plan.method,
                "batch": batch,
                "image_tokens": plan.image_tokens,
                **({"bucket": bucket} if bucket else {}),
                "kept": verdicts,
                "logits_max_abs_diff": worst,
                "greedy_equal": greedy,
                "positions_ok": positions_ok,
                "kv_lengths": kv,
                "kv_lengths_ok": kv_ok,
                "passed": ok and greedy and positions_ok and kv_ok and "mismatch" not in verdicts,
            }
        )
    return results


def grid_positions(mask: torch.Tensor, image_start: torch.Tensor, image_tokens: int) -> torch.Tensor:
    """M-RoPE positions [B, S, 3] of prompts whose image block of ``image_tokens`` rows is a grid (as wide as
    ``ceil(sqrt(n))``): t = h = w for text, (p, p + row, p + col) inside the block, and the text after it
    continuing from p + max(rows, cols), as ``get_rope_index`` numbers a picture."""
    width = max(1, int(np.ceil(np.sqrt(image_tokens))))
    rows = -(-image_tokens // width)
    out = torch.zeros(*mask.shape, 3, dtype=torch.int64)
    for b, start in enumerate(image_start.tolist()):
        real = torch.nonzero(mask[b]).flatten()
        first = int(real[0])
        block = start - first  # positions before the image: 0 .. block-1
        text_before = torch.arange(block)
        index = torch.arange(image_tokens)
        image = torch.stack([torch.full_like(index, block), block + index // width, block + index % width], dim=-1)
        after = len(real) - block - image_tokens
        text_after = block + max(rows, width) + torch.arange(after)
        out[b, first:] = torch.cat([text_before[:, None].expand(-1, 3), image, text_after[:, None].expand(-1, 3)])
    return out


def _reference_select(hidden, score, positions, mask, starts, n_in: int, keep: int, renumber: bool):
    """METHODS.md's stage rule written out per sample: the top ``keep`` image rows (ties: lower index)
    in ascending order, every text row, positions gathered (or renumbered over the mask)."""
    rows = []
    for b, start in enumerate(starts.tolist()):
        kept = reference_topk_ascending(score[b : b + 1, start : start + n_in], keep)[0]
        index = torch.cat([torch.arange(start), start + kept, torch.arange(start + n_in, hidden.shape[1])])
        m = mask[b, index]
        p = (m.cumsum(-1) - 1).clamp(min=0) if renumber else positions[b, index]
        if renumber and positions.dim() == 3:
            p = p[:, None].expand(-1, 3)
        rows.append((hidden[b, index], p, m, kept))
    return [torch.stack(parts) for parts in zip(*rows, strict=True)]


def _reference_dart_select(hidden, score, normed, positions, mask, starts, n_in: int, keep: int, parameters: dict):
    """DART inside the LLM written out per sample: ``reference_dart_stage``'s rows (pivots by ``score``,
    cosines on ``normed``), every text row, ORIGINAL positions gathered."""
    kept = reference_dart_stage(normed, score, mask, starts, n_in, keep, parameters)
    rows = []
    for b, start in enumerate(starts.tolist()):
        index = torch.cat([torch.arange(start), start + kept[b], torch.arange(start + n_in, hidden.shape[1])])
        rows.append((hidden[b, index], positions[b, index], mask[b, index], kept[b]))
    return [torch.stack(parts) for parts in zip(*rows, strict=True)]


@torch.no_grad()
def verify_selectors(
    graphs, plan: PruningPlan, hidden_size: int, bucket, dynamic: bool = False, seed: int = 5, dims: int = 1
) -> list[dict]:
    """Every stage selector of ``plan`` alone against ``_reference_select`` (batch 2, blocks at
    different offsets, left padding, tied scores inside the image block). ``dynamic``: the
    selectors take the block length and kept count as input lengths (``image_rows``, ``keep_rows``).
    A DART stage against ``_reference_dart_select``: also duplicated image rows (tied cosines) and a
    sample with fewer real text rows."""
    from tpc.artifact_layout import select_name, stage_inputs

    results = []
    for stage in range(1, len(plan.stages) + 1):
        spec = plan.stages[stage - 1]
        n_in = stage_inputs(plan, stage)
        generator = torch.Generator().manual_seed(seed + stage)
        t = n_in + 11
        hidden = torch.randn(2, t, hidden_size, generator=generator)
        score = torch.rand(2, t, generator=generator)
        score[:, 6:10] = 0.5  # ties: the lower index wins
        mask = torch.ones(2, t, dtype=torch.int64)
        mask[1, :3] = 0
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        starts = torch.tensor([2, 5], dtype=torch.int64)
        if dims == 3:
            positions = grid_positions(mask, starts, n_in)
        feeds = {
            "hidden": hidden.numpy(),
            "score": score.numpy(),
            "position_ids": positions.numpy(),
            "attention_mask": mask.numpy(),
            "image_start": starts.numpy(),
        }
        if spec.rule == DART:
            normed = torch.randn(2, t, hidden_size, generator=generator)
            for b, start in enumerate(starts.tolist()):
                normed[b, start + 1] = normed[b, start]  # duplicated image rows: tied cosines
                normed[b, start + n_in - 1] = normed[b, start + n_in // 2]
            mask[1, -2] = 0  # fewer real text rows in the second sample (a masked row is never a pivot)
            feeds.update(attention_mask=mask.numpy(), normed_hidden=normed.numpy())
            want = _reference_dart_select(
                hidden, score, normed, positions, mask, starts, n_in, spec.keep, plan.parameters
            )
        else:
            want = _reference_select(
                hidden, score, positions, mask, starts, n_in, spec.keep, spec.positions == RENUMBERED
            )
        if dynamic:
            feeds.update(image_rows=np.arange(n_in, dtype=np.int64), keep_rows=np.arange(spec.keep, dtype=np.int64))
        got = graphs.run_graph(select_name(stage, bucket), feeds)
        equal = all(np.array_equal(np.asarray(g), w.numpy()) for g, w in zip(got, want, strict=True))
        results.append({"method": plan.method, "stage": stage, "bucket": bucket, "image_tokens": n_in, "passed": equal})
    return results
