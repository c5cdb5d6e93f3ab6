"""TensorRT build plan and trtexec commands for llava-tiny (no GPU needed)."""

import shlex

import pytest

from tpc.compiler.trt_plan import PlanSettings, build_script, make_plan, trtexec_command
from tpc.errors import UsageError
from tpc.runtimes.trt_shapes import select_profile

RUNTIME = {
    "keep": 64,
    "feature_dim": 64,
    "image_size": 336,
    "hidden_size": 64,
    "num_kv_heads": 2,
    "head_dim": 16,
    "num_layers": 2,
    "max_context": 2048,
}
FILES = {"vision": "vision.onnx", "embed": "embed.onnx", "decoder": "decoder.onnx"}


@pytest.fixture()
def plan():
    return make_plan(RUNTIME, FILES, PlanSettings(max_batch=2, max_prompt_tokens=100))


def test_profiles_cover_every_shape_the_runtime_asks_for(plan):
    decoder = plan["engines"]["decoder"]["profiles"]
    assert [p["name"] for p in decoder] == ["prefill", "decode"]
    k, b = 64, 2
    for batch in (1, b):
        for prompt in (1, 30, 100 + k):  # prefill: empty past, prompt + kept tokens
            shapes = {
                "inputs_embeds": (batch, prompt, 64),
                "attention_mask": (batch, prompt),
                "position_ids": (batch, prompt),
            }
            shapes.update({f"past_{kv}_{i}": (batch, 2, 0, 16) for i in range(2) for kv in ("key", "value")})
            assert select_profile(decoder, shapes) == 0
        for past in (1, 500, 2047):  # decode: one token, past up to the context
            shapes = {"inputs_embeds": (batch, 1, 64), "attention_mask": (batch, past + 1), "position_ids": (batch, 1)}
            shapes.update({f"past_{kv}_{i}": (batch, 2, past, 16) for i in range(2) for kv in ("key", "value")})
            assert select_profile(decoder, shapes) == 1
        assert select_profile(plan["engines"]["vision"]["profiles"], {"pixel_values": (batch, 3, 336, 336)}) == 0
        embed = plan["engines"]["embed"]["profiles"]
        assert select_profile(embed, {"input_ids": (batch, 100 + k), "image_features": (batch, k, 64)}) == 0
        assert select_profile(embed, {"input_ids": (batch, 1), "image_features": (batch, 1, 64)}) == 0


def test_shapes_outside_the_plan_are_a_clear_error(plan):
    with pytest.raises(UsageError, match="no optimization profile .* covers"):
        select_profile(plan["engines"]["vision"]["profiles"], {"pixel_values": (3, 3, 336, 336)})
    decoder = plan["engines"]["decoder"]["profiles"]
    with pytest.raises(UsageError, match="--max-prompt-tokens"):
        select_profile(decoder, {"inputs_embeds": (1, 500, 64), "attention_mask": (1, 500), "position_ids": (1, 500)})


def test_trtexec_commands_are_well_formed(plan):
    cmd = trtexec_command(plan, "decoder")
    assert cmd[0] == "trtexec" and "--onnx=decoder.onnx" in cmd and "--saveEngine=engines/decoder.plan" in cmd
    assert "--fp16" in cmd and "--memPoolSize=workspace:4096M" in cmd
    assert "--timingCacheFile=engines/timing.cache" in cmd
    assert cmd.index("--profile=0") < cmd.index("--profile=1")
    mins = [c for c in cmd if c.startswith("--minShapes=")]
    assert len(mins) == 2
    prefill = dict(item.split(":") for item in mins[0].split("=", 1)[1].split(","))
    assert prefill["inputs_embeds"] == "1x1x64" and prefill["past_key_0"] == "1x2x0x16"
    maxes = dict(
        item.split(":") for item in [c for c in cmd if c.startswith("--maxShapes=")][1].split("=", 1)[1].split(",")
    )
    assert maxes["past_value_1"] == "2x2x2047x16" and maxes["attention_mask"] == "2x2048"
    vision = trtexec_command(plan, "vision")
    assert "--profile=0" not in vision and "--minShapes=pixel_values:1x3x336x336" in vision
    assert "--maxShapes=pixel_values:2x3x336x336" in vision


def test_build_script_parses_as_shell(plan):
    script = build_script(plan)
    assert script.startswith("#!/usr/bin/env bash")
    for line in script.splitlines():
        if line and not line.startswith("#"):
            shlex.split(line.rstrip("\\"))
    assert script.count('"$TRTEXEC"') == 3


@pytest.mark.parametrize("precision,flag", [("bf16", "--bf16"), ("fp32", None)])
def test_precision_flags(precision, flag):
    plan = make_plan(RUNTIME, FILES, PlanSettings(precision=precision))
    cmd = trtexec_command(plan, "vision")
    assert (flag in cmd) if flag else not any(c in cmd for c in ("--fp16", "--bf16"))


@pytest.mark.parametrize(
    "settings",
    [
        PlanSettings(precision="int3"),
        PlanSettings(max_batch=0),
        PlanSettings(max_context=1),
        PlanSettings(max_context=99999),
    ],
)
def test_bad_plan_settings(settings):
    with pytest.raises(UsageError):
        make_plan(RUNTIME, FILES, settings)


def test_staged_decoder_profiles_follow_the_pruned_lengths():
    from tpc.methods.in_llm import LLM_METHODS

    llm = LLM_METHODS.get("pdrop").plan({"layers": "1", "keep": "0.25"}, 2, 64, None)
    runtime = dict(RUNTIME, llm_pruning=llm.as_dict())
    files = {
        "vision": "vision.onnx",
        "embed": "embed.onnx",
        "decoder_0": "decoder_0.onnx",
        "select_1": "select_1.onnx",
        "decoder_1": "decoder_1.onnx",
    }
    plan = make_plan(runtime, files, PlanSettings(max_batch=2, max_prompt_tokens=100))
    assert set(plan["engines"]) == set(files)
    first, second = plan["engines"]["decoder_0"]["profiles"], plan["engines"]["decoder_1"]["profiles"]
    assert first[0]["shapes"]["inputs_embeds"]["max"] == [2, 164, 64]  # prompt + 64 image tokens
    assert second[0]["shapes"]["hidden_states"]["max"] == [2, 164 - 48, 64]  # 48 image tokens dropped
    assert "past_key_1" in second[1]["shapes"] and "past_key_0" not in second[1]["shapes"]
    for profiles in (first, second):  # a text-only prompt is not pruned: every segment decodes to the context
        assert (
            select_profile(
                profiles,
                {
                    n: (1, 2, 2047, 16)
                    if n.startswith("past")
                    else (
                        (1, 1, 64)
                        if n.endswith(("embeds", "states"))
                        else (1, 2048)
                        if n == "attention_mask"
                        else (1, 1)
                    )
                    for n in profiles[1]["shapes"]
                },
            )
            == 1
        )
    select = plan["engines"]["select_1"]["profiles"][0]["shapes"]
    assert select["hidden"]["min"] == [1, 65, 64] and select["hidden"]["max"] == [2, 164, 64]
    script = build_script(plan)
    assert "--onnx=decoder_1.onnx" in script and "--onnx=select_1.onnx" in script
    assert "past_key_1:1x2x0x16" in " ".join(trtexec_command(plan, "decoder_1"))
