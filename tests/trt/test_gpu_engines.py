"""On a GPU with TensorRT: engines select and generate exactly like the ORT artifact."""

import numpy as np
import pytest

from tpc.compiler.trt_build import tensorrt_usable

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not tensorrt_usable(), reason="needs TensorRT and a CUDA GPU")
def test_engines_match_the_ort_artifact(tmp_path, demo_image):
    from tpc.compiler.pipeline import CompileSettings, compile_model
    from tpc.compiler.trt_plan import PlanSettings
    from tpc.runtimes.compiled_model import CompiledModel

    trt_dir = compile_model(
        CompileSettings(
            model="llava-tiny",
            output=tmp_path / "trt",
            ratio=0.89,
            target="trt",
            plan=PlanSettings(precision="fp32", max_batch=2),
        )
    )
    ort_dir = compile_model(CompileSettings(model="llava-tiny", output=tmp_path / "ort", ratio=0.89, target="ort"))
    trt_model, ort_model = CompiledModel.load(trt_dir), CompiledModel.load(ort_dir)
    assert trt_model.graphs.describe()["runtime"] == "tensorrt"
    prompts = ["What is in the picture?", "Describe it."]
    images = [demo_image, demo_image.rotate(90)]
    got = trt_model.generate(prompts, images, max_new_tokens=8)
    want = ort_model.generate(prompts, images, max_new_tokens=8)
    assert np.array_equal(got.kept_indices, want.kept_indices)
    assert got.token_ids == want.token_ids


def _cuda_ort() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(not _cuda_ort(), reason="needs onnxruntime-gpu with CUDA")
def test_cuda_provider_runs_on_gpu(tmp_path):
    from tpc.compiler.pipeline import CompileSettings, compile_model
    from tpc.runtimes.compiled_model import CompiledModel

    out = compile_model(CompileSettings(model="llava-tiny", output=tmp_path / "a", ratio=0.89, target="onnx"))
    model = CompiledModel.load(out, provider="cuda")
    info = model.graphs.describe()
    if info["fell_back"]:
        pytest.skip(f"onnxruntime-gpu fell back to {info['provider']} (CUDA/cuDNN libraries missing)")
    cpu = CompiledModel.load(out)
    got = model.generate(["What is it?"], None, max_new_tokens=6)
    want = cpu.generate(["What is it?"], None, max_new_tokens=6)
    assert info["provider"] == "CUDAExecutionProvider" and got.token_ids == want.token_ids


@pytest.mark.skipif(not tensorrt_usable(), reason="needs TensorRT and a CUDA GPU")
def test_fastv_segment_engines_match_the_ort_artifact(tmp_path, demo_image):
    """Per-segment engines with per-layer KV lengths: kept tokens, KV lengths and tokens as ORT."""
    from tpc.compiler.pipeline import CompileSettings, compile_model
    from tpc.compiler.precision import PrecisionSettings
    from tpc.compiler.trt_plan import PlanSettings
    from tpc.runtimes.compiled_model import CompiledModel

    common = dict(model="llava-tiny", method="fastv", method_args={"layer": "2"}, ratio=0.75)
    trt_dir = compile_model(
        CompileSettings(
            output=tmp_path / "trt",
            target="trt",
            plan=PlanSettings(precision="fp32", max_batch=2),
            precision=PrecisionSettings(dtype="fp32"),  # as the ort artifact's graphs (trt's default is fp16)
            **common,
        )
    )
    ort_dir = compile_model(CompileSettings(output=tmp_path / "ort", target="ort", **common))
    trt_model, ort_model = CompiledModel.load(trt_dir), CompiledModel.load(ort_dir)
    prompts = ["What is in the picture?", "Describe it."]
    images = [demo_image, demo_image.rotate(90)]
    got = trt_model.generate(prompts, images, max_new_tokens=8, stop_at_eos=False)
    want = ort_model.generate(prompts, images, max_new_tokens=8, stop_at_eos=False)
    assert np.array_equal(got.llm_kept_indices, want.llm_kept_indices)
    assert got.kv_lengths == want.kv_lengths
    assert got.token_ids == want.token_ids
