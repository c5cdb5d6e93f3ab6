"""The graph-side pieces of in-LLM pruning: survivor index, one-row attention, segments."""

from __future__ import annotations

import torch

from tpc.methods.in_llm import LLM_METHODS
from tpc.methods.in_llm_reference import _additive_mask, _attention_weights
from tpc.models.decoder_segments import DecoderSegment, StageSelect, last_token_attention, stage_index


def test_stage_index_keeps_text_and_the_chosen_image_rows():
    kept = torch.tensor([[0, 2, 5], [1, 3, 4]])
    index = stage_index(torch.tensor([2, 0]), kept, seq=10, dropped=3)
    assert index.tolist() == [[0, 1, 2, 4, 7, 8, 9], [1, 3, 4, 6, 7, 8, 9]]


def test_stage_select_orders_by_score_and_handles_ties_by_lower_index():
    score = torch.zeros(1, 8)
    score[0, 2:6] = torch.tensor([0.1, 0.5, 0.5, 0.2])  # image rows 2..5; rows 3 and 4 tie
    hidden = torch.arange(8.0).view(1, 8, 1)
    positions = torch.arange(8).view(1, 8)
    mask = torch.ones(1, 8, dtype=torch.int64)
    h, p, m, kept = StageSelect(4, 1, renumber=False)(hidden, score, positions, mask, torch.tensor([2]))
    assert kept.tolist() == [[1]]  # image row 1 (position 3) wins the tie
    assert h.flatten().tolist() == [0, 1, 3, 6, 7] and p.tolist() == [[0, 1, 3, 6, 7]]
    _, p, _, _ = StageSelect(4, 2, renumber=True)(hidden, score, positions, mask, torch.tensor([2]))
    assert p.tolist() == [[0, 1, 2, 3, 4, 5]]


def test_one_row_attention_equals_the_last_row_of_the_full_matrix(tiny):
    model, _ = tiny
    lm = model.model.language_model
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 11, 64, generator=g)
    mask = torch.ones(2, 11, dtype=torch.int64)
    mask[1, :3] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cos, sin = lm.rotary_emb(hidden, positions)
    with torch.no_grad():
        row = last_token_attention(lm.layers[1], hidden, cos, sin, mask)
        full = _attention_weights(lm.layers[1], hidden, cos, sin, _additive_mask(mask, 11, hidden.dtype))
    assert torch.allclose(row, full[:, :, -1].mean(1), atol=1e-6)
    assert float(row[1, :3].abs().max()) == 0.0  # padding keys get no attention


def test_segments_chain_to_the_full_decoder_without_pruning(tiny):
    model, _ = tiny
    plan = LLM_METHODS.get("pdrop").plan({"layers": "1,3", "keep": "0.5,0.25"}, 4, 20, None)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(1, 25, 64, generator=g)
    mask = torch.ones(1, 25, dtype=torch.int64)
    positions = torch.arange(25)[None]
    x = h
    with torch.no_grad():
        for index, (start, end) in enumerate(plan.segments()):
            stage = plan.stages[index] if index < len(plan.stages) else None
            seg = DecoderSegment(model, start, end, stage.score_layer if stage else None)
            out = seg(x, mask, positions, [torch.zeros(1, 2, 0, 16) for _ in range(2 * (end - start))])
            x = out[0]
            assert len(out) == (1 if stage is None else 2) + 2 * (end - start)
        expected = model.lm_head(model.model.language_model(inputs_embeds=h).last_hidden_state[:, -1])
    assert torch.allclose(x, expected, atol=1e-5)
