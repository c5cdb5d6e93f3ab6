"""What the Qwen family tests share: seeded noise pictures and HF's token lists cut at EOS."""

from __future__ import annotations

import numpy as np
from PIL import Image

PROMPT = "What is in the picture?"


def picture(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def trim(tokens, eos) -> list[int]:
    """``tokens`` up to and including the first EOS (what tpc's generate returns)."""
    out = []
    for t in tokens:
        out.append(t)
        if t in eos:
            break
    return out
