"""Which requests may share one generate call, and per-row sampling inside it.

A batched row must give exactly the tokens a single ``CompiledModel.generate`` gives
for that request. So requests share a call only if they need the same visual-token
bucket and all have an image or none (the runtime's rule). Sampling: ``RowSampler``
gives every row its own seeded sampler, each drawing once per step exactly as it would
alone; that holds while the generate loop hands the sampler every row of the batch,
which it does unless the artifact prunes inside the LLM (its rows are split into
groups by image-block length). There, sampled requests run alone; greedy ones still
batch, since argmax is per row.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from tpc.runtimes.sampling import Sampler


class RowSampler:
    """``[B, V]`` logits -> ``[B]`` ids, row ``i`` chosen by ``samplers[i]``."""

    def __init__(self, samplers: Sequence[Sampler]):
        self.samplers = list(samplers)

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        if len(logits) != len(self.samplers):
            raise ValueError(f"{len(logits)} rows of logits for {len(self.samplers)} per-row samplers")
        return np.array([s(logits[row : row + 1])[0] for row, s in enumerate(self.samplers)], dtype=np.int64)


def batch_sampler(samplers: Sequence[Sampler]) -> Sampler | RowSampler:
    """One sampler for a batch: a plain one when every row is greedy (argmax needs no rows), else per row."""
    if len(samplers) == 1 or all(s.greedy for s in samplers):
        return samplers[0]
    return RowSampler(samplers)


def batch_key(has_image: bool, keep: int | None, greedy: bool, per_row_sampling: bool, job_id: int) -> Hashable:
    """Requests with equal keys may run in one generate call."""
    sampling = "batched" if per_row_sampling or greedy else ("alone", job_id)
    return has_image, keep, sampling
