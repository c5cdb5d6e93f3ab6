"""The TensorRT runtime's shape and compatibility logic as pure functions."""

import pytest

from tests.trt.test_plan import FILES, RUNTIME
from tpc.errors import ArtifactError
from tpc.runtimes.ort import provider_options, shape_list
from tpc.runtimes.trt_shapes import check_engine_compat, max_output_shapes, output_shapes, resolve_shape

DECODER = {
    "inputs": [
        {"name": "inputs_embeds", "shape": ["batch", "seq", 64]},
        {"name": "attention_mask", "shape": ["batch", "past_seq + seq"]},
        {"name": "position_ids", "shape": ["batch", "seq"]},
        {"name": "past_key_0", "shape": ["batch", 2, "past_seq", 16]},
    ],
    "outputs": [
        {"name": "logits", "shape": ["batch", 320]},
        {"name": "present_key_0", "shape": ["batch", 2, "past_seq + seq", 16]},
    ],
}


def test_output_shapes_from_inputs():
    shapes = output_shapes(
        DECODER,
        {"inputs_embeds": (2, 5, 64), "attention_mask": (2, 12), "position_ids": (2, 5), "past_key_0": (2, 2, 7, 16)},
    )
    assert shapes == {"logits": (2, 320), "present_key_0": (2, 2, 12, 16)}
    assert resolve_shape(["batch", "3 + seq"], {"batch": 1, "seq": 4}) == (1, 7)
    with pytest.raises(ArtifactError, match="not bound"):
        resolve_shape(["nope"], {})


def test_buffers_sized_for_the_profile_maximum():
    from tpc.compiler.trt_plan import PlanSettings, make_plan

    plan = make_plan(RUNTIME, FILES, PlanSettings(max_batch=4))
    decode = plan["engines"]["decoder"]["profiles"][1]
    assert max_output_shapes(DECODER, decode)["present_key_0"] == (4, 2, 2048, 16)


RECORDED = {"tensorrt_version": "10.13.0", "gpu_name": "Orin", "compute_capability": "8.7"}


def test_engines_for_another_gpu_or_version_are_refused():
    check_engine_compat(RECORDED, dict(RECORDED))
    with pytest.raises(ArtifactError, match="built for Orin .*sm 8.7.*this GPU is NVIDIA H100"):
        check_engine_compat(
            RECORDED, {"tensorrt_version": "10.13.0", "gpu_name": "NVIDIA H100", "compute_capability": "9.0"}
        )
    with pytest.raises(ArtifactError, match="TensorRT 10.13.0, this machine has 10.9.0"):
        check_engine_compat(RECORDED, dict(RECORDED, tensorrt_version="10.9.0"))
    with pytest.raises(ArtifactError, match="no built engines"):
        check_engine_compat(None, RECORDED)


def test_ort_tensorrt_provider_options_match_the_plan(tmp_path):
    from tpc.compiler.trt_plan import PlanSettings, make_plan

    plan = make_plan(RUNTIME, FILES, PlanSettings())
    chain = provider_options("tensorrt", plan, "decoder", tmp_path)
    name, options = chain[0]
    assert name == "TensorrtExecutionProvider" and options["trt_fp16_enable"] is True
    assert options["trt_engine_cache_path"] == str(tmp_path)
    assert options["trt_profile_min_shapes"] == shape_list(plan["engines"]["decoder"]["profiles"], "min")
    assert options["trt_profile_min_shapes"].count("inputs_embeds:") == 2  # one entry per profile
    assert [c[0] if isinstance(c, tuple) else c for c in chain] == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert provider_options("cpu", None, "vision", None) == ["CPUExecutionProvider"]
