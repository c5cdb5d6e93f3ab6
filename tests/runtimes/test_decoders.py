"""Where the image block is, and which in-LLM plan a prompt gets."""

from __future__ import annotations

import numpy as np
import pytest

from tpc.errors import UsageError
from tpc.methods.in_llm import LLM_METHODS
from tpc.runtimes.decoders import image_groups, llm_plan_for

IMG = 4


def test_image_groups_find_each_rows_start_and_count():
    ids = np.array([[3, 3, IMG, IMG, IMG, 7], [1, IMG, IMG, IMG, 8, 9]])
    (group,) = image_groups(ids, IMG)
    assert group.image_tokens == 3 and group.rows.tolist() == [0, 1] and group.starts.tolist() == [2, 1]
    (text_only,) = image_groups(np.array([[1, 2, 3]]), IMG)
    assert text_only.image_tokens is None and text_only.starts is None


def test_image_groups_split_samples_whose_blocks_differ():
    """Pictures of different crop grids (or buckets) reach the decoder as blocks of different lengths."""
    ids = np.array([[IMG, IMG, 5, 5], [5, IMG, 5, 5], [5, 5, 5, 5], [5, IMG, IMG, 6]])
    groups = image_groups(ids, IMG)
    assert [(g.image_tokens, g.rows.tolist()) for g in groups] == [(None, [2]), (1, [1]), (2, [0, 3])]
    assert groups[2].starts.tolist() == [0, 1]


def test_image_groups_reject_a_split_block():
    with pytest.raises(UsageError, match="sample 0: its image tokens are not one contiguous block"):
        image_groups(np.array([[IMG, 5, IMG]]), IMG)


def test_plan_choice_fixed_and_bucketed():
    plans = {k: LLM_METHODS.get("fastv").plan({"layer": "1"}, 4, k, 0.5) for k in (32, 64)}
    fixed = {"llm_pruning": plans[64].as_dict(), "keep": 64}
    assert llm_plan_for(fixed, 64) == (plans[64], None)
    with pytest.raises(UsageError, match="needs one contiguous block of 64"):
        llm_plan_for(fixed, 32)
    bucketed = dict(fixed, llm_pruning_buckets={str(k): p.as_dict() for k, p in plans.items()})
    assert llm_plan_for(bucketed, 32) == (plans[32], 32)
    with pytest.raises(UsageError, match="selectors take image blocks of 32, 64 tokens"):
        llm_plan_for(bucketed, 48)
    assert llm_plan_for(bucketed, None) == (plans[64], None)  # no image: no selector runs
