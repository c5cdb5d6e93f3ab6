"""In-LLM pruning on the multi-crop families (Mistral and Qwen2 decoders): one stage selector per
image-block length, batches of pictures with different grids, against the eager reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.compiler.verify_llm import expected_kv_lengths
from tpc.methods import METHODS
from tpc.methods.in_llm import PruningPlan
from tpc.methods.in_llm_reference import reference_generate
from tpc.models.families import make_adapter
from tpc.models.presets import PRESETS, build_preset
from tpc.runtimes.compiled_model import CompiledModel

PROMPTS = ["What is on the left?", "Describe the picture, please, in a few words."]
NEW_TOKENS = 5


def _picture(height: int, width: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


TALL, SQUARE = _picture(700, 300, 1), _picture(500, 480, 3)  # a tall grid and a square one: different crops

CONFIGS = {
    # LLaVA-NeXT (Mistral): FasterVLM per crop, then PyramidDrop in two stages
    "llava-next-tiny": dict(
        method="fastervlm", ratio=0.5, llm_method="pdrop", llm_method_args={"layers": "1,2", "keep": "0.5,0.25"}
    ),
    # LLaVA-OneVision (Qwen2, q/k/v biases): received attention per crop, then FastV at layer 1
    "llava-onevision-tiny": dict(
        method="received", ratio=0.9, llm_method="fastv", llm_method_args={"layer": "1"}, llm_ratio=0.5
    ),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def family(request, tmp_path_factory):
    preset = request.param
    out = compile_model(
        CompileSettings(
            model=preset, output=tmp_path_factory.mktemp("multicrop") / "a", target="ort", **CONFIGS[preset]
        )
    )
    model, processor = build_preset(PRESETS[preset])
    return preset, out, make_adapter(model, processor)


def _bucket_plan(runtime: dict, image_tokens: int) -> PruningPlan:
    return PruningPlan.from_dict(runtime["llm_pruning_buckets"][str(image_tokens)])


def reference_run(compiled, adapter, prompt: str, image, plan_for=_bucket_plan, new_tokens: int = NEW_TOKENS):
    """The picture's reference rows (METHODS.md per crop, or HF's packing unpruned), embedded and run
    through the eager in-LLM reference with ``plan_for(runtime, rows)``'s plan."""
    runtime = compiled.runtime
    method = METHODS.get(compiled.artifact.manifest["method"]["vision_method"])
    rows, _ = adapter.reference_rows(image, method, runtime["keep"], {})
    ids = compiled.encoder.tokens([prompt], [len(rows)]).input_ids
    with torch.no_grad():
        embeds = adapter.embedding_step()(torch.from_numpy(ids), rows[None])
    plan = plan_for(runtime, len(rows))
    start = torch.tensor([ids[0].tolist().index(runtime["image_token_id"])])
    run = reference_generate(adapter.model, embeds, torch.ones_like(torch.from_numpy(ids)), start, plan, new_tokens)
    composed = np.arange(plan.image_tokens)[None]
    for kept in run.kept:
        composed = np.take_along_axis(composed, kept.numpy(), axis=1)
    return plan, run, composed[0], ids.shape[1]


def test_one_selector_per_image_block_length_and_every_length_verified(family):
    preset, out, adapter = family
    manifest = json.loads((out / "manifest.json").read_text())
    keep = manifest["keep"]
    lengths = sorted(int(n) for n in manifest["runtime"]["llm_pruning_buckets"])
    assert lengths == adapter.image_token_counts(keep) and len(lengths) > 1
    assert all(n % keep == 0 for n in lengths)  # every crop of every grid keeps `keep`
    stages = len(manifest["llm_pruning"]["stages"])
    assert {f"select_{s}_k{n}" for s in range(1, stages + 1) for n in lengths} <= set(manifest["graphs"])
    verification = manifest["verification"]
    # end to end for the shortest and longest block; every selector of every length alone
    checked = {(r["bucket"], r["batch"]) for r in verification["llm_pruning"]}
    assert checked == {(n, b) for n in (lengths[0], lengths[-1]) for b in (1, 2)}
    selectors = {(r["bucket"], r["stage"]) for r in verification["llm_selectors"]}
    assert selectors == {(n, s) for n in lengths for s in range(1, stages + 1)}
    assert all(r["passed"] for r in verification["llm_pruning"] + verification["llm_selectors"])


def test_batch_of_two_grids_equals_the_eager_reference_per_picture(family):
    preset, out, adapter = family
    compiled = CompiledModel.load(out)
    images = [TALL, SQUARE]
    both = compiled.generate(PROMPTS, images, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
    assert both.crops_per_image[0] != both.crops_per_image[1] and both.image_tokens[0] != both.image_tokens[1]
    for row, (prompt, image) in enumerate(zip(PROMPTS, images, strict=True)):
        plan, ref, composed, prompt_len = reference_run(compiled, adapter, prompt, image)
        assert both.token_ids[row] == ref.tokens[0]
        assert np.array_equal(both.llm_kept_indices[row, : len(composed)], composed)
        assert (both.llm_kept_indices[row, len(composed) :] == -1).all()
        single = compiled.generate([prompt], [image], max_new_tokens=NEW_TOKENS, stop_at_eos=False)
        assert single.token_ids[0] == ref.tokens[0]
        assert single.kv_lengths == ref.kv_lengths == expected_kv_lengths(plan, prompt_len, NEW_TOKENS - 1)


def test_text_only_prompt_is_not_pruned(family):
    _, out, _ = family
    result = CompiledModel.load(out).generate(PROMPTS, None, max_new_tokens=3)
    assert result.llm_kept_indices is None and len(set(result.kv_lengths)) == 1
