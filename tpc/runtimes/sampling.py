"""Next-token choice: greedy, or temperature with nucleus (top-p) sampling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tpc.errors import UsageError


@dataclass
class Sampler:
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not (self.temperature >= 0):
            raise UsageError(f"--temperature must be >= 0, got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise UsageError(f"--top-p must be in (0, 1], got {self.top_p}")
        self._rng = np.random.default_rng(self.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """[B, V] logits -> [B] token ids."""
        if self.greedy:
            return logits.argmax(axis=-1).astype(np.int64)
        scaled = logits.astype(np.float64) / self.temperature
        probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        out = np.empty(len(probs), dtype=np.int64)
        for row, p in enumerate(probs):
            order = np.argsort(-p, kind="stable")
            cumulative = np.cumsum(p[order])
            cut = int(np.searchsorted(cumulative, self.top_p) + 1)
            chosen = order[:cut]
            weights = p[chosen] / p[chosen].sum()
            out[row] = chosen[self._rng.choice(len(chosen), p=weights)]
        return out
