"""TensorRT for grid families (Qwen2.5-VL tiny), without a GPU: one engine and profile per compiled grid, embedding
and decoder profiles sized for the largest grid's kept tokens, 3-D position ids, the build script, the static check.
The engines themselves run under the ``gpu`` marker."""

from __future__ import annotations

import json
import shlex
import subprocess

import numpy as np
import pytest

from tests.conftest import run_cli
from tpc.compiler.trt_plan import PlanSettings, make_plan, trtexec_command
from tpc.errors import ArtifactError, UsageError
from tpc.runtimes.trt import cast_feed
from tpc.runtimes.trt_shapes import select_profile

GRIDS = {"vision_12x20": [12, 20], "vision_20x12": [20, 12], "vision_16x16": [16, 16]}  # the preset's sizes
PATCH_VALUES = 1176


@pytest.fixture(scope="module")
def trt_artifact(tmp_path_factory):
    """``tpc compile qwen2.5-vl-tiny --ratio 0.75 --target trt --no-build --max-batch 2 --max-prompt-tokens 100``."""
    from tpc.cli import main

    out = tmp_path_factory.mktemp("qwen-trt") / "trt"
    argv = ["compile", "qwen2.5-vl-tiny", "--ratio", "0.75", "--target", "trt", "--no-build", "--max-batch", "2"]
    try:
        main([*argv, "--max-prompt-tokens", "100", "-q", "-o", str(out)])
    except SystemExit as exc:
        assert exc.code in (0, None), f"tpc compile exited with {exc.code}"
    return out, json.loads((out / "manifest.json").read_text())


def test_trt_compile_plans_one_engine_per_grid(trt_artifact):
    _, manifest = trt_artifact
    plan, keeps = manifest["trt_plan"], manifest["grid_vision"]["keep"]
    assert manifest["precision"]["dtype"] == "fp16" and manifest["verification"]["passed"]  # trt loads fp16
    assert list(plan["engines"]) == [*GRIDS, "embed", "decoder"]
    for name, (h, w) in GRIDS.items():
        engine = plan["engines"][name]
        assert engine["onnx"] == manifest["graphs"][name]["file"] and engine["engine"] == f"engines/{name}.plan"
        (profile,) = engine["profiles"]
        length = h * w
        assert profile == {
            "name": name,
            "shapes": {
                "pixel_patches": {
                    "min": [1, length, PATCH_VALUES],
                    "opt": [1, length, PATCH_VALUES],
                    "max": [2, length, PATCH_VALUES],
                }
            },
        }
        for batch in (1, 2):
            assert select_profile(engine["profiles"], {"pixel_patches": (batch, length, PATCH_VALUES)}) == 0
        with pytest.raises(UsageError, match="no optimization profile"):  # another grid's length
            select_profile(engine["profiles"], {"pixel_patches": (1, length + 4, PATCH_VALUES)})
    k = max(keeps.values())
    assert k == keeps["vision_16x16"] == 16
    embed = plan["engines"]["embed"]["profiles"]
    assert embed[0]["shapes"]["image_features"]["max"] == [2, k, 64]
    assert plan["limits"]["max_prefill_tokens"] == 100 + k
    for count in keeps.values():  # every grid's kept block, prompt and all
        assert select_profile(embed, {"input_ids": (2, 100 + count), "image_features": (2, count, 64)}) == 0
    prefill, decode = plan["engines"]["decoder"]["profiles"]
    assert prefill["shapes"]["position_ids"] == {"min": [1, 1, 3], "opt": [1, 80, 3], "max": [2, 116, 3]}
    assert decode["shapes"]["position_ids"] == {"min": [1, 1, 3], "opt": [1, 1, 3], "max": [2, 1, 3]}
    past = {f"past_{kv}_{i}": (2, 2, 0, 16) for i in range(4) for kv in ("key", "value")}
    shapes = {"inputs_embeds": (2, 116, 64), "attention_mask": (2, 116), "position_ids": (2, 116, 3), **past}
    assert select_profile(plan["engines"]["decoder"]["profiles"], shapes) == 0
    with pytest.raises(UsageError):  # 2-D positions are not what this decoder takes
        select_profile(plan["engines"]["decoder"]["profiles"], dict(shapes, position_ids=(2, 116)))


def test_build_script_names_every_engine(trt_artifact):
    out, manifest = trt_artifact
    script = (out / "build_engines.sh").read_text()
    subprocess.run(["bash", "-n", str(out / "build_engines.sh")], check=True)
    for name in manifest["trt_plan"]["engines"]:
        assert f"--saveEngine=engines/{name}.plan" in script
        assert f"--onnx={manifest['graphs'][name]['file']}" in script
    command = trtexec_command(manifest["trt_plan"], "vision_12x20")
    assert "--minShapes=pixel_patches:1x240x1176" in command and "--maxShapes=pixel_patches:2x240x1176" in command
    assert "--fp16" in command and not any(part.startswith("--profile") for part in command)
    assert shlex.split(shlex.join(command)) == command
    # the grid engines carry no weights (refitted from the shared vision.weights at load); the others do
    assert "--stripWeights" in command and "--stripWeights" not in trtexec_command(manifest["trt_plan"], "decoder")
    assert all(manifest["trt_plan"]["engines"][name].get("strip_weights") for name in GRIDS)
    assert not manifest["trt_plan"]["engines"]["embed"].get("strip_weights")


def test_stripped_grid_engines_are_built_and_refitted_with_the_tensorrt_api(trt_artifact, tmp_path, monkeypatch):
    """The Python-API build sets STRIP_PLAN + REFIT_IDENTICAL for the grid engines only, and loading refits each
    from its ONNX graph (whose weights live in vision.weights); recorded with a stand-in ``tensorrt`` module."""
    import shutil
    import sys
    import types

    from tpc.compiler.trt_build import build_with_python_api
    from tpc.runtimes.trt import refit_from_onnx

    source, manifest = trt_artifact
    out = shutil.copytree(source, tmp_path / "artifact")  # the build writes engines: not into the shared artifact
    calls: dict[str, list] = {"flags": [], "refit": []}

    class Config:
        def __init__(self):
            self.flags = set()

        def set_memory_pool_limit(self, *args):
            pass

        def set_flag(self, flag):
            self.flags.add(flag)

        def create_timing_cache(self, data):
            return object()

        def set_timing_cache(self, *args, **kwargs):
            pass

        def add_optimization_profile(self, profile):
            pass

        def get_timing_cache(self):
            return types.SimpleNamespace(serialize=lambda: b"")

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return object()

        def create_builder_config(self):
            self.config = Config()
            return self.config

        def create_optimization_profile(self):
            return types.SimpleNamespace(set_shape=lambda *args: None)

        def build_serialized_network(self, network, config):
            calls["flags"].append(config.flags)
            return b"plan"

    class Refitter:
        def __init__(self, engine, logger):
            self.engine = engine

        def refit_cuda_engine(self):
            calls["refit"].append(self.engine)
            return True

    class OnnxParserRefitter:
        def __init__(self, refitter, logger):
            pass

        def refit_from_file(self, path):
            calls["refit"].append(path)
            return True

    flags = types.SimpleNamespace(FP16="FP16", BF16="BF16", STRIP_PLAN="STRIP_PLAN", REFIT_IDENTICAL="REFIT_IDENTICAL")
    fake = types.SimpleNamespace(
        Logger=type("Logger", (), {"WARNING": 0, "__init__": lambda self, level=0: None}),
        Builder=Builder,
        OnnxParser=lambda network, logger: types.SimpleNamespace(parse_from_file=lambda path: True, num_errors=0),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE=0),
        BuilderFlag=flags,
        Refitter=Refitter,
        OnnxParserRefitter=OnnxParserRefitter,
    )
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    plan = dict(manifest["trt_plan"], timing_cache="timing.cache")
    (out / "engines").mkdir(exist_ok=True)
    build_with_python_api(out, plan, lambda _: None)
    by_engine = dict(zip(plan["engines"], calls["flags"], strict=True))
    for name, engine_flags in by_engine.items():
        stripped = {"STRIP_PLAN", "REFIT_IDENTICAL"} <= engine_flags
        assert stripped == (name in GRIDS), name
    engine = object()
    refit_from_onnx(engine, out / manifest["graphs"]["vision_12x20"]["file"], logger=None)
    assert calls["refit"] == [str(out / manifest["graphs"]["vision_12x20"]["file"]), engine]


def test_static_check_finds_no_blockers_on_any_grid_graph(trt_artifact, capsys):
    out, manifest = trt_artifact
    reports = {r["graph"]: r for r in manifest["trt_check"]}
    assert set(reports) == set(manifest["graphs"])
    for name in GRIDS:  # the window gather/scatter, the received-attention score and the top-k pass
        report = reports[name]
        assert report["ok"] and not report["blockers"], report["blockers"]
        assert report["ops"].get("TopK") and not report["warnings"]
    code, stdout, err = run_cli(["check", str(out)], capsys)
    assert code == 0, err
    for name in GRIDS:
        assert f"{name}: ok" in stdout
    assert "BLOCKER" not in stdout


def test_a_grid_runtime_plans_without_signatures():
    """``make_plan`` from the runtime section alone (ONNX Runtime's TensorRT provider plans this way)."""
    runtime = {
        "keep": 30,
        "feature_dim": 64,
        "image_size": 0,
        "hidden_size": 64,
        "num_kv_heads": 2,
        "head_dim": 16,
        "num_layers": 2,
        "max_context": 2048,
        "position_dims": 3,
        "image_tokens_max": 30,
        "image_layout": {"kind": "grid", "patch_size": 14, "merge_size": 2, "patch_values": 1176, "crops_max": 1},
        "grid_vision": {
            "grids": {"vision_8x8": [8, 8], "vision_12x20": [12, 20]},
            "keep": {"vision_8x8": 16, "vision_12x20": 30},
            "tokens": {"vision_8x8": 16, "vision_12x20": 60},
        },
    }
    files = {"vision_8x8": "a.onnx", "vision_12x20": "b.onnx", "embed": "e.onnx", "decoder": "d.onnx"}
    plan = make_plan(runtime, files, PlanSettings(max_batch=4, max_prompt_tokens=50))
    assert list(plan["engines"]) == ["vision_8x8", "vision_12x20", "embed", "decoder"]
    assert plan["engines"]["vision_8x8"]["profiles"][0]["shapes"]["pixel_patches"]["max"] == [4, 64, 1176]
    assert plan["engines"]["embed"]["profiles"][0]["shapes"]["image_features"]["max"] == [4, 30, 64]
    assert plan["limits"]["max_prefill_tokens"] == 80

    from tpc.runtimes.ort import provider_options

    ((_, options), *_) = provider_options("tensorrt", plan, "vision_12x20", None)
    assert options["trt_profile_max_shapes"] == "pixel_patches:4x240x1176"


def test_engine_inputs_take_the_engines_dtypes():
    pixels = np.ones((1, 4, 3), np.float32)
    assert cast_feed(pixels, np.dtype(np.float16)).dtype == np.float16  # a half-precision graph's engine
    assert cast_feed(pixels, None) is pixels
    ids = np.ones((1, 3), np.int64)
    assert cast_feed(ids, np.dtype(np.int32)).dtype == np.int32
    with pytest.raises(ArtifactError, match="takes float16, got int64"):
        cast_feed(ids, np.dtype(np.float16))


@pytest.mark.gpu
def test_grid_engines_generate_like_the_ort_artifact(tmp_path):
    """On a GPU with TensorRT: fp32 engines of every grid select and generate as the fp32 ORT artifact."""
    from PIL import Image

    from tpc.compiler.pipeline import CompileSettings, compile_model
    from tpc.compiler.precision import PrecisionSettings
    from tpc.compiler.trt_build import tensorrt_usable
    from tpc.runtimes.compiled_model import CompiledModel

    if not tensorrt_usable():
        pytest.skip("needs TensorRT and a CUDA GPU")
    fp32 = PrecisionSettings(dtype="fp32")
    trt_dir = compile_model(
        CompileSettings(
            model="qwen2.5-vl-tiny",
            output=tmp_path / "trt",
            ratio=0.75,
            target="trt",
            precision=fp32,
            plan=PlanSettings(precision="fp32", max_batch=2),
        )
    )
    ort_dir = compile_model(CompileSettings(model="qwen2.5-vl-tiny", output=tmp_path / "ort", ratio=0.75))
    trt_model, ort_model = CompiledModel.load(trt_dir), CompiledModel.load(ort_dir)
    assert trt_model.graphs.describe()["runtime"] == "tensorrt"
    assert set(trt_model.graphs.engines) == {*GRIDS, "embed", "decoder"}
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((224, 224), (168, 280))]
    prompts = ["What is in the picture?", "Describe it."]
    got = trt_model.generate(prompts, images, max_new_tokens=6)
    want = ort_model.generate(prompts, images, max_new_tokens=6)
    assert [p["grid"] for p in got.pictures] == [(16, 16), (12, 20)]
    assert np.array_equal(got.kept_indices, want.kept_indices)
    assert got.token_ids == want.token_ids
    for name, (h, w) in GRIDS.items():  # every grid engine at batch 1 and 2
        for batch in (1, 2):
            patches = rng.standard_normal((batch, h * w, PATCH_VALUES)).astype(np.float32)
            features, kept = trt_model.graphs.run_graph(name, {"pixel_patches": patches})
            ref_features, ref_kept = ort_model.graphs.run_graph(name, {"pixel_patches": patches})
            assert kept.dtype == np.int64 and np.array_equal(kept, ref_kept)
            np.testing.assert_allclose(features, ref_features, rtol=1e-2, atol=1e-2)
