"""Compiled FastV / PyramidDrop artifacts against the eager reference inside HF's Llama layers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import run_cli
from tpc.compiler.verify_llm import expected_kv_lengths
from tpc.methods import METHODS
from tpc.methods.in_llm import PruningPlan
from tpc.methods.in_llm_reference import reference_generate
from tpc.runtimes.compiled_model import CompiledModel

PROMPTS = ["What is in the picture?", "Describe the colours you can see in this image, please."]
NEW_TOKENS = 6


def _reference(compiled, adapter, batch):
    runtime = compiled.runtime
    keep = runtime["keep"]
    _, features, _ = METHODS.get("fastervlm").reference(adapter, torch.from_numpy(batch.pixel_values), keep)
    ids = torch.from_numpy(batch.input_ids)
    with torch.no_grad():
        embeds = adapter.embedding_step()(ids, features)
    start = (ids == runtime["image_token_id"]).to(torch.int64).argmax(dim=1)
    plan = PruningPlan.from_dict(runtime["llm_pruning"])
    run = reference_generate(adapter.model, embeds, torch.from_numpy(batch.attention_mask), start, plan, NEW_TOKENS)
    return plan, run


@pytest.mark.parametrize("name", ["fastv", "pdrop", "fastervlm+fastv"])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_greedy_tokens_kept_tokens_and_kv_lengths_equal_the_reference(
    llm_artifacts, tiny_adapter, demo_image, name, batch_size
):
    compiled = CompiledModel.load(llm_artifacts(name), runtime="ort")
    images = [demo_image, demo_image.rotate(90, expand=True)][:batch_size]
    prompts = PROMPTS[:batch_size]  # different lengths: the second sample is left-padded
    result = compiled.generate(prompts, images, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
    batch = compiled.encoder(prompts, images, max_new_tokens=NEW_TOKENS)
    plan, ref = _reference(compiled, tiny_adapter, batch)

    assert result.token_ids == ref.tokens
    composed = np.broadcast_to(np.arange(plan.image_tokens), (batch_size, plan.image_tokens))
    for kept in ref.kept:
        composed = np.take_along_axis(composed, kept.numpy(), axis=1)
    assert np.array_equal(result.llm_kept_indices, composed)
    prompt_len = batch.input_ids.shape[1]
    assert result.kv_lengths == ref.kv_lengths == expected_kv_lengths(plan, prompt_len, NEW_TOKENS - 1)
    first, last = plan.stages[0], plan.stages[-1]
    assert result.kv_lengths[first.layer - 1] == prompt_len + NEW_TOKENS - 1  # before the first stage: full
    assert result.kv_lengths[-1] == prompt_len - (plan.image_tokens - last.keep) + NEW_TOKENS - 1


def test_text_only_prompt_runs_unpruned_and_matches_hf_generate(llm_artifacts, tiny):
    model, _ = tiny
    compiled = CompiledModel.load(llm_artifacts("fastv"), runtime="ort")
    result = compiled.generate(PROMPTS, None, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
    batch = compiled.encoder(PROMPTS, None, max_new_tokens=NEW_TOKENS)
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.from_numpy(batch.input_ids),
            attention_mask=torch.from_numpy(batch.attention_mask),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            min_new_tokens=NEW_TOKENS,
            pad_token_id=model.config.text_config.pad_token_id,
        )
    assert result.token_ids == out[:, batch.input_ids.shape[1] :].tolist()
    assert result.llm_kept_indices is None
    assert len(set(result.kv_lengths)) == 1  # nothing pruned: every layer holds the whole prompt


def test_manifest_records_the_plan_and_the_per_segment_graphs(llm_artifacts):
    manifest = json.loads((llm_artifacts("pdrop") / "manifest.json").read_text())
    llm = manifest["llm_pruning"]
    assert [(s["layer"], s["keep"]) for s in llm["stages"]] == [(1, 288), (2, 144), (3, 72)]
    assert list(manifest["graphs"]) == [
        "vision",
        "embed",
        "decoder_0",
        "select_1",
        "decoder_1",
        "select_2",
        "decoder_2",
        "select_3",
        "decoder_3",
    ]
    assert manifest["method"]["name"] == "pdrop"
    checks = manifest["verification"]["llm_pruning"]
    assert [c["batch"] for c in checks] == [1, 2] and all(c["passed"] and c["kept"] == ["exact"] * 3 for c in checks)
    # each segment's past keys have their own length axis: the decode graphs take per-layer KV lengths
    past = [i["shape"][2] for i in manifest["graphs"]["decoder_2"]["inputs"] if i["name"].startswith("past_key")]
    assert past == ["past_seq_2"]


def test_run_json_reports_llm_kept_tokens_and_kv_lengths(llm_artifacts, demo_image, tmp_path, capsys):
    path = tmp_path / "demo.png"
    demo_image.save(path)
    code, out, _ = run_cli(
        [
            "run",
            str(llm_artifacts("fastv")),
            "--runtime",
            "ort",
            "--image",
            str(path),
            "--prompt",
            "hi",
            "--max-new-tokens",
            "2",
            "--json",
        ],
        capsys,
    )
    assert code == 0
    payload = json.loads(out)
    assert len(payload["llm_kept_indices"]) == 144
    assert payload["kv_lengths"][:2] != payload["kv_lengths"][2:] and len(payload["kv_lengths"]) == 4


@pytest.mark.parametrize("keep", [32, 64])
def test_bucketed_budget_then_fastv_matches_the_reference_per_bucket(llm_artifacts, tiny_adapter, demo_image, keep):
    root = llm_artifacts("buckets+fastv")
    manifest = json.loads((root / "manifest.json").read_text())
    assert sorted(manifest["llm_pruning_buckets"]) == ["32", "64"]
    assert {"select_1_k32", "select_1_k64", "decoder_0", "decoder_1"} <= set(manifest["graphs"])
    assert {"select_1_k32", "select_1_k64"} <= set(manifest["trt_plan"]["engines"])
    assert all(r["passed"] for r in manifest["verification"]["llm_pruning"])
    assert {r["bucket"] for r in manifest["verification"]["llm_pruning"]} == {32, 64}
    compiled = CompiledModel.load(root, runtime="ort")
    compiled.set_budget(keep=keep)
    images = [demo_image, demo_image.rotate(90, expand=True)]
    result = compiled.generate(PROMPTS, images, max_new_tokens=NEW_TOKENS, stop_at_eos=False)
    assert result.image_tokens == [keep, keep]
    batch = compiled.encoder.tokens(PROMPTS, [keep, keep], max_new_tokens=NEW_TOKENS)
    batch.pixel_values = compiled.encoder.pixels(images, 2)
    runtime = dict(compiled.runtime, keep=keep, llm_pruning=manifest["llm_pruning_buckets"][str(keep)])
    plan, ref = _reference(type("M", (), {"runtime": runtime})(), tiny_adapter, batch)
    assert plan.stages[0].keep == keep // 2
    assert result.token_ids == ref.tokens
    assert result.kv_lengths == ref.kv_lengths


def test_run_text_output_summarises_kv_lengths(llm_artifacts, demo_image, tmp_path, capsys):
    path = tmp_path / "demo.png"
    demo_image.save(path)
    code, _, err = run_cli(
        [
            "run",
            str(llm_artifacts("fastv")),
            "--runtime",
            "ort",
            "--image",
            str(path),
            "--prompt",
            "hi",
            "--max-new-tokens",
            "2",
        ],
        capsys,
    )
    assert code == 0
    line = err.strip().splitlines()[-1]
    assert line.startswith("in-LLM pruning kept 144 image tokens; keys per decoder layer: ")
    full, pruned = line.split(": ")[1].split(", ")
    assert full.endswith(" x2") and pruned.endswith(" x2") and int(full.split()[0]) - int(pruned.split()[0]) == 432
