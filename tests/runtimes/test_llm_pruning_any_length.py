"""In-LLM pruning of UNPRUNED multi-crop pictures: the image block's length follows each picture's
aspect ratio (unpad, newlines), so one selector per stage takes the length at run time."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.runtimes.test_llm_pruning_multicrop import PROMPTS, SQUARE, TALL, reference_run
from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.compiler.verify_llm import expected_kv_lengths
from tpc.methods.in_llm import plan_for_length
from tpc.models.families import make_adapter
from tpc.models.presets import PRESETS, build_preset
from tpc.runtimes.compiled_model import CompiledModel

NEW_TOKENS = 4
CONFIGS = {
    # FastV alone, original positions
    "fastv": ("llava-next-tiny", dict(method="fastv", llm_method_args={"layer": "1"}, ratio=0.75)),
    # PyramidDrop in two stages, renumbered positions (the Qwen2 decoder's selectors are the same graphs:
    # tests/runtimes/test_llm_pruning_multicrop.py runs them there; its longest unpruned block is 8.8k rows)
    "pdrop": ("llava-next-tiny", dict(method="pdrop", llm_method_args={"layers": "1,2", "keep": "0.5,0.25"})),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def family(request, tmp_path_factory):
    preset, config = CONFIGS[request.param]
    config = dict(config)
    method = config.pop("method")
    out = compile_model(
        CompileSettings(
            model=preset,
            output=tmp_path_factory.mktemp("any-length") / "a",
            target="ort",
            method=method,
            method_args=config.pop("llm_method_args"),
            **config,
        )
    )
    model, processor = build_preset(PRESETS[preset])
    return preset, out, make_adapter(model, processor)


def test_one_selector_per_stage_checked_at_several_lengths(family):
    _, out, adapter = family
    manifest = json.loads((out / "manifest.json").read_text())
    rule = manifest["runtime"]["llm_pruning_rule"]
    stages = len(manifest["llm_pruning"]["stages"])
    assert "llm_pruning_buckets" not in manifest["runtime"]
    assert {f"select_{s}" for s in range(1, stages + 1)} <= set(manifest["graphs"])
    assert (
        manifest["llm_pruning"]["image_tokens"]
        == rule["max_image_tokens"]
        == adapter.max_image_tokens(adapter.vision.num_patches)
    )
    verification = manifest["verification"]
    firsts = [r for r in verification["llm_selectors"] if r["stage"] == 1]
    lengths = {r["image_tokens"] for r in firsts}  # the block lengths each selector was checked at
    assert len(lengths) == 3 and max(lengths) == rule["max_image_tokens"]
    assert len(verification["llm_selectors"]) == 3 * stages
    assert {r["image_tokens"] for r in verification["llm_pruning"]} == {min(lengths), max(lengths)}
    assert all(r["passed"] for r in verification["llm_pruning"] + verification["llm_selectors"])


def _rule_plan(runtime: dict, image_tokens: int):
    return plan_for_length(runtime["llm_pruning_rule"], runtime["num_layers"], image_tokens)


def test_pictures_of_different_lengths_equal_the_eager_reference(family):
    _, out, adapter = family
    compiled = CompiledModel.load(out)
    images = [TALL, SQUARE]
    both = compiled.generate(PROMPTS, images, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
    assert both.image_tokens[0] != both.image_tokens[1]
    for row, (prompt, image) in enumerate(zip(PROMPTS, images, strict=True)):
        plan, ref, composed, prompt_len = reference_run(compiled, adapter, prompt, image, _rule_plan, NEW_TOKENS)
        assert plan.image_tokens == both.image_tokens[row]
        assert both.token_ids[row] == ref.tokens[0]
        assert np.array_equal(both.llm_kept_indices[row, : len(composed)], composed)
        single = compiled.generate([prompt], [image], max_new_tokens=NEW_TOKENS, stop_at_eos=False)
        assert single.token_ids[0] == ref.tokens[0]
        assert single.kv_lengths == ref.kv_lengths == expected_kv_lengths(plan, prompt_len, NEW_TOKENS - 1)
