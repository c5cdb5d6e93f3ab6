"""In-LLM pruning plans (budgets, stages, validation) and the eager reference itself."""

from __future__ import annotations

import pytest
import torch

from tpc.errors import UsageError
from tpc.methods.in_llm import LLM_METHODS, ORIGINAL, RENUMBERED, default_pdrop_layers
from tpc.methods.in_llm_reference import reference_generate


def plan(name, args, layers=14, tokens=576, ratio=None):
    return LLM_METHODS.get(name).plan(args, layers, tokens, ratio)


def test_fastv_keeps_round_n_times_one_minus_r_and_original_positions():
    p = plan("fastv", {"layer": "2"}, ratio=0.75)
    assert [(s.layer, s.score_layer, s.keep, s.positions) for s in p.stages] == [(2, 1, 144, ORIGINAL)]
    assert plan("fastv", {"layer": "2"}, ratio=0.5).stages[0].keep == 288
    assert plan("fastv", {}, tokens=64, ratio=0.89).stages[0].keep == 7  # round(7.04)
    assert p.segments() == [(0, 2), (2, 14)]
    assert p.layer_keep() == [576, 576] + [144] * 12


def test_pdrop_counts_with_int_and_renumbers():
    p = plan("pdrop", {"layers": "8,16,24", "keep": "0.5,0.25,0.125"}, layers=32)
    assert [(s.layer, s.score_layer, s.keep, s.positions) for s in p.stages] == [
        (8, 8, 288, RENUMBERED),
        (16, 16, 144, RENUMBERED),
        (24, 24, 72, RENUMBERED),
    ]
    assert plan("pdrop", {"layers": "4", "keep": "0.3"}, tokens=100).stages[0].keep == 30
    assert plan("pdrop", {"layers": "4", "keep": "0.333"}, tokens=100).stages[0].keep == 33  # int(), not round
    assert p.segments() == [(0, 8), (8, 16), (16, 24), (24, 32)]


def test_pdrop_default_stages_are_the_quarter_points():
    assert default_pdrop_layers(32) == [8, 16, 24]
    assert default_pdrop_layers(14) == [4, 7, 10]
    assert [s.keep for s in plan("pdrop", {}).stages] == [288, 144, 72]


@pytest.mark.parametrize(
    "name,args,ratio,message",
    [
        ("fastv", {"layer": "0"}, 0.5, "must be in [1, 13]"),
        ("fastv", {"layer": "14"}, 0.5, "must be in [1, 13]"),
        ("fastv", {"layer": "two"}, 0.5, "expected an integer"),
        ("fastv", {"depth": "2"}, 0.5, "no parameter 'depth'"),
        ("fastv", {}, 1.0, "outside [0, 1)"),
        ("pdrop", {"layers": "8,4", "keep": "0.5,0.25"}, None, "layers must increase"),
        ("pdrop", {"layers": "4,8", "keep": "0.5"}, None, "2 layers but 1 keep fractions"),
        ("pdrop", {"layers": "4,8", "keep": "0.25,0.5"}, None, "not increasing"),
        ("pdrop", {"layers": "4", "keep": "1.5"}, None, "fractions in (0, 1]"),
        ("pdrop", {}, 0.5, "--ratio does not apply"),
    ],
)
def test_bad_parameters_are_one_line_usage_errors(name, args, ratio, message):
    with pytest.raises(UsageError) as info:
        plan(name, args, ratio=ratio)
    assert message in str(info.value) and "\n" not in str(info.value)


def _inputs(hidden, n_img, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = n_img + 9
    embeds = torch.randn(batch, t, hidden, generator=g) * 0.5
    mask = torch.ones(batch, t, dtype=torch.int64)
    if batch == 2:
        mask[1, :2] = 0
    return embeds, mask, torch.tensor([3, 5][:batch])


def test_reference_keeping_every_token_is_the_plain_language_model(tiny):
    model, _ = tiny
    layers = model.config.text_config.num_hidden_layers
    embeds, mask, start = _inputs(64, 30, 2)
    full = reference_generate(model, embeds, mask, start, plan("fastv", {"layer": "2"}, layers, 30, 0.0), 3)
    plain = reference_generate(model, embeds, mask, None, plan("fastv", {"layer": "2"}, layers, 30, 0.0), 3)
    with torch.no_grad():
        out = model.model.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
        )
        expected = model.lm_head(out.last_hidden_state[:, -1])
    assert torch.allclose(full.logits[0], expected, atol=1e-5)
    assert full.tokens == plain.tokens
    assert full.kv_lengths == [39 + 2] * layers


def test_reference_fastv_keeps_original_positions_with_gaps(tiny):
    model, _ = tiny
    layers = model.config.text_config.num_hidden_layers
    embeds, mask, start = _inputs(64, 30, 1)
    run = reference_generate(model, embeds, mask, start, plan("fastv", {"layer": "2"}, layers, 30, 0.5), 2)
    kept = run.kept[0][0]
    expected = torch.cat([torch.arange(3), 3 + kept, torch.arange(33, 39)])
    assert torch.equal(run.positions[2][0], expected)  # survivors keep their ids
    assert torch.equal(run.positions[1][0], torch.arange(39))  # layers before K see everything
    assert run.kv_lengths == [40, 40, 25, 25]


def test_reference_pdrop_renumbers_positions_per_stage(tiny):
    model, _ = tiny
    embeds, mask, start = _inputs(64, 40, 2)
    p = plan("pdrop", {"layers": "1,3", "keep": "0.5,0.25"}, 4, 40)
    run = reference_generate(model, embeds, mask, start, p, 3)
    assert torch.equal(run.positions[1][0], torch.arange(49 - 20))
    assert torch.equal(run.positions[3][0], torch.arange(49 - 30))
    assert torch.equal(run.positions[3][1], (torch.arange(49 - 30) - 2).clamp(min=0))  # left padding
    assert run.kv_lengths == [51, 31, 31, 21]
    assert [k.shape[1] for k in run.kept] == [20, 10]
