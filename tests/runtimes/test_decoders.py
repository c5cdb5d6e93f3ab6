"""Where the image block is, and which in-LLM plan a prompt gets."""

from __future__ import annotations

import numpy as np
import pytest

from tpc.errors import UsageError
from tpc.methods.in_llm import LLM_METHODS
from tpc.runtimes.decoders import image_block, llm_plan_for

IMG = 4


def test_image_block_finds_each_rows_start_and_count():
    ids = np.array([[3, 3, IMG, IMG, IMG, 7], [1, IMG, IMG, IMG, 8, 9]])
    count, starts = image_block(ids, IMG)
    assert count == 3 and starts.tolist() == [2, 1]
    assert image_block(np.array([[1, 2, 3]]), IMG) == (None, None)


@pytest.mark.parametrize(
    "ids,message",
    [
        ([[IMG, IMG, 5], [IMG, 5, 5]], "samples carry 1, 2 image tokens"),
        ([[IMG, 5, IMG]], "not one contiguous block"),
        ([[IMG, IMG, 5], [5, 5, 5]], "samples carry 0, 2 image tokens"),
    ],
)
def test_image_block_rejects_what_the_staged_graphs_cannot_prune(ids, message):
    with pytest.raises(UsageError, match=message):
        image_block(np.array(ids), IMG)


def test_plan_choice_fixed_and_bucketed():
    plans = {k: LLM_METHODS.get("fastv").plan({"layer": "1"}, 4, k, 0.5) for k in (32, 64)}
    fixed = {"llm_pruning": plans[64].as_dict(), "keep": 64}
    assert llm_plan_for(fixed, 64) == (plans[64], None)
    with pytest.raises(UsageError, match="needs one contiguous block of 64"):
        llm_plan_for(fixed, 32)
    bucketed = dict(fixed, llm_pruning_buckets={str(k): p.as_dict() for k, p in plans.items()})
    assert llm_plan_for(bucketed, 32) == (plans[32], 32)
    with pytest.raises(UsageError, match="not a compiled bucket"):
        llm_plan_for(bucketed, 48)
