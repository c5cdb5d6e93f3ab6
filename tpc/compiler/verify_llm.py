"""Parity of the staged decoder graphs (FastV, PyramidDrop) with the eager reference.

For batch 1 and a left-padded batch 2 with an image block at different offsets: the
image tokens each stage keeps (identical, or different only between tied scores), the
logits of prefill and of every decode step, greedy ids, the position ids each segment
saw, and the per-layer KV lengths (full before the first stage, pruned after).
"""

from __future__ import annotations

import numpy as np
import torch

from tpc.compiler.parity import close, compare_indices
from tpc.methods.in_llm import RENUMBERED, PruningPlan
from tpc.methods.in_llm_reference import reference_generate


def expected_kv_lengths(plan: PruningPlan, prompt_len: int, steps: int) -> list[int]:
    return [prompt_len - (plan.image_tokens - kept) + steps for kept in plan.layer_keep()]


@torch.no_grad()
def verify_staged_decoder(
    graphs, adapter, plan: PruningPlan, runtime: dict, seed: int = 3, steps: int = 2, bucket: int | None = None
) -> list[dict]:
    from tpc.runtimes.decoders import StagedDecoder

    hidden = adapter.text.hidden_size
    results = []
    for batch in (1, 2):
        generator = torch.Generator().manual_seed(seed + batch)
        prompt_len = plan.image_tokens + 9
        embeds = torch.randn(batch, prompt_len, hidden, generator=generator) * 0.5
        mask = torch.ones(batch, prompt_len, dtype=torch.int64)
        image_start = torch.tensor([3, 5][:batch], dtype=torch.int64)
        if batch == 2:
            mask[1, :2] = 0  # left padding on the second sample
        step_embeds = [torch.randn(batch, 1, hidden, generator=generator) * 0.5 for _ in range(steps)]
        ref = reference_generate(adapter.model, embeds, mask, image_start, plan, steps + 1, step_embeds)

        decoder = StagedDecoder(graphs, runtime, plan, bucket)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = [decoder.prefill(embeds.numpy(), mask.numpy(), positions.numpy(), image_start.numpy())]
        logits += [decoder.step(e.numpy()) for e in step_embeds]

        verdicts = [
            compare_indices(got, want.numpy(), score.numpy())
            for got, want, score in zip(decoder.stage_kept, ref.kept, ref.scores, strict=True)
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
