"""Build an artifact's TensorRT engines from its plan: Python API, or trtexec."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tpc.compiler.trt_plan import ENGINE_DIR, trtexec_command
from tpc.errors import ArtifactError, ExportError

log = logging.getLogger(__name__)


def tensorrt_usable() -> bool:
    """True when ``tensorrt`` imports and a CUDA device is present."""
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def build_with_python_api(root: Path, plan: dict[str, Any], progress: Callable[[str], None]) -> None:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    cache_path = root / plan["timing_cache"]
    for name, engine in plan["engines"].items():
        progress(f"build {name} engine")
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(root / engine["onnx"])):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"TensorRT could not parse {engine['onnx']}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan["workspace_mb"] << 20)
        if plan["precision"] in ("fp16", "int8", "fp8"):
            config.set_flag(trt.BuilderFlag.FP16)
        elif plan["precision"] == "bf16":
            config.set_flag(trt.BuilderFlag.BF16)
        if plan["precision"] in ("int8", "fp8"):
            config.set_flag(getattr(trt.BuilderFlag, plan["precision"].upper()))
        if engine.get("strip_weights"):  # weights come from the shared ONNX weights at load (refit)
            config.set_flag(trt.BuilderFlag.STRIP_PLAN)
            config.set_flag(trt.BuilderFlag.REFIT_IDENTICAL)
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        for profile_spec in engine["profiles"]:
            profile = builder.create_optimization_profile()
            for tensor, shape in profile_spec["shapes"].items():
                profile.set_shape(tensor, shape["min"], shape["opt"], shape["max"])
            config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ExportError(f"TensorRT failed to build the {name} engine (see the log above)")
        (root / engine["engine"]).write_bytes(bytes(serialized))
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))


def build_with_trtexec(
    root: Path, plan: dict[str, Any], progress: Callable[[str], None], trtexec: str = "trtexec"
) -> None:
    if shutil.which(trtexec) is None:
        raise ArtifactError(f"{trtexec} not found on PATH (it ships with TensorRT; on Jetson: /usr/src/tensorrt/bin)")
    for name in plan["engines"]:
        progress(f"build {name} engine (trtexec)")
        result = subprocess.run(trtexec_command(plan, name, trtexec), cwd=root, capture_output=True, text=True)
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip().splitlines()[-1:] or ["no output"]
            raise ExportError(f"trtexec failed for the {name} engine: {tail[0]}")


def check_quantized_graphs(root: Path, plan: dict[str, Any]) -> None:
    """int8/fp8 plans need Q/DQ nodes in every graph; refuse before building anything when they are missing."""
    from tpc.compiler.trt_plan import QDQ_PRECISIONS, QDQ_REQUIREMENT

    if plan["precision"] not in QDQ_PRECISIONS:
        return
    import onnx

    bare = []
    for name, engine in plan["engines"].items():
        model = onnx.load(str(root / engine["onnx"]), load_external_data=False)
        if not any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node):
            bare.append(name)
    if bare:
        raise ArtifactError(
            f"--precision {plan['precision']}: {', '.join(bare)} carry no Q/DQ nodes; "
            + QDQ_REQUIREMENT.format(precision=plan["precision"])
        )


def build_engines(
    root: Path, manifest: dict[str, Any], use_trtexec: bool = False, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Build every engine of the plan into ``root/engines``; returns the manifest's ``engines`` record."""
    from tpc.runtimes.trt import current_device

    progress = progress or (lambda _: None)
    plan = manifest.get("trt_plan")
    if not plan:
        raise ArtifactError(f"{root}: no TensorRT plan (compile with --target trt)")
    check_quantized_graphs(root, plan)
    device = current_device()
    (root / ENGINE_DIR).mkdir(exist_ok=True)
    (build_with_trtexec if use_trtexec else build_with_python_api)(root, plan, progress)
    return dict(device, precision=plan["precision"], builder="trtexec" if use_trtexec else "python-api")
