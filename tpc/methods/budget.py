"""How many visual tokens a method keeps (METHODS.md, "Budget")."""

from __future__ import annotations

import math

from tpc.errors import UsageError

# Guards ceil() against float error: 576 * (1 - 0.89) = 63.360000000000014 must give 64,
# and 576 * (1 - 0.75) = 144.00000000000003 must give 144, not 145.
_EPS = 1e-9


def keep_count(num_tokens: int, ratio: float | None = None, keep: int | None = None) -> int:
    """Tokens kept out of ``num_tokens``: ``keep`` if given, else ceil(N * (1 - ratio))."""
    if keep is not None:
        if isinstance(keep, bool) or not isinstance(keep, int):
            raise UsageError(f"--keep must be an integer, got {keep!r}")
        if not 1 <= keep <= num_tokens:
            raise UsageError(f"--keep {keep} is outside [1, {num_tokens}] (the model has {num_tokens} visual tokens)")
        return keep
    ratio = 0.0 if ratio is None else ratio
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and 0.0 <= ratio < 1.0):
        raise UsageError(f"--ratio {ratio} is outside [0, 1): it is the fraction of visual tokens removed")
    return max(1, math.ceil(num_tokens * (1.0 - ratio) - _EPS))
