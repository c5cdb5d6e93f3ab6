"""TensorRT execution of an artifact's engines (imports tensorrt and torch.cuda lazily).

Same interface as ``OrtGraphs`` (vision / embed / decoder / run_graph on numpy arrays), so the
generate loop, ``tpc run`` and ``tpc profile`` are unchanged; feeds are cast to each engine
input's type (half-precision graphs take fp16). Grid families (Qwen2.5-VL) run their
``vision_<h>x<w>`` engines through ``run_graph``. Device buffers are torch
CUDA tensors; the decoder's engine has two optimization profiles (prefill, decode),
each with its own execution context, picked per call by the input shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tpc.artifact_layout import DECODER, EMBED, VISION, kv_names
from tpc.errors import ArtifactError
from tpc.manifest import Artifact
from tpc.runtimes.trt_shapes import check_engine_compat, select_profile


def current_device() -> dict[str, Any]:
    """TensorRT version and GPU of this machine (raises ArtifactError if unusable)."""
    try:
        import tensorrt as trt
        import torch
    except ImportError as exc:
        raise ArtifactError(f"TensorRT is not installed ({exc.name}); install tpc[trt] on the GPU machine") from None
    if not torch.cuda.is_available():
        raise ArtifactError("no CUDA device: TensorRT engines need a GPU")
    major, minor = torch.cuda.get_device_capability(0)
    return {
        "tensorrt_version": trt.__version__,
        "gpu_name": torch.cuda.get_device_name(0),
        "compute_capability": f"{major}.{minor}",
    }


def _numpy_dtype(trt, dtype) -> np.dtype | None:
    """The numpy dtype of a TensorRT tensor type (None where numpy has none, e.g. bf16)."""
    try:
        return np.dtype(trt.nptype(dtype))
    except (TypeError, KeyError, ValueError):
        return None


def cast_feed(array: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
    """``array`` in the dtype its engine input is bound as (floats to floats, integers to integers)."""
    array = np.asarray(array)
    if dtype is None or array.dtype == dtype:
        return array
    if np.issubdtype(array.dtype, np.floating) != np.issubdtype(dtype, np.floating):
        raise ArtifactError(f"an engine input takes {dtype}, got {array.dtype}")
    return array.astype(dtype)


def refit_from_onnx(engine, onnx_path: Path, logger) -> None:
    """Fill a weight-stripped engine's weights from its ONNX graph (the grid graphs' shared weights file)."""
    import tensorrt as trt

    refitter = trt.Refitter(engine, logger)
    parser_refitter = trt.OnnxParserRefitter(refitter, logger)
    if not parser_refitter.refit_from_file(str(onnx_path)) or not refitter.refit_cuda_engine():
        raise ArtifactError(f"{onnx_path.name}: TensorRT could not refit the weight-stripped engine from it")


class _Engine:
    def __init__(self, runtime, path: Path, profiles: list[dict], refit_from: Path | None = None, logger=None):
        import tensorrt as trt

        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"{path}: TensorRT could not deserialize the engine")
        if refit_from is not None:
            refit_from_onnx(self.engine, refit_from, logger)
        self.profiles = profiles
        # one execution context per optimization profile, bound to it on first use
        self.contexts = [self.engine.create_execution_context() for _ in range(self.engine.num_optimization_profiles)]
        self.inputs = [
            self.engine.get_tensor_name(i)
            for i in range(self.engine.num_io_tensors)
            if self.engine.get_tensor_mode(self.engine.get_tensor_name(i)) == trt.TensorIOMode.INPUT
        ]
        self.outputs = [
            self.engine.get_tensor_name(i)
            for i in range(self.engine.num_io_tensors)
            if self.engine.get_tensor_mode(self.engine.get_tensor_name(i)) == trt.TensorIOMode.OUTPUT
        ]
        self._activated: set[int] = set()
        # the dtype each input is bound as: a half-precision graph's engine takes fp16 floats, so numpy
        # feeds (float32 pixels, features) are cast to it; int64 ids stay int64 (TensorRT 10 binds int64)
        self.input_dtypes = {name: _numpy_dtype(trt, self.engine.get_tensor_dtype(name)) for name in self.inputs}

    def run(self, feeds: dict[str, np.ndarray], stream) -> list[np.ndarray]:
        import tensorrt as trt
        import torch

        index = select_profile(self.profiles, {n: a.shape for n, a in feeds.items()})
        context = self.contexts[index]
        if index not in self._activated:
            context.set_optimization_profile_async(index, stream.cuda_stream)
            self._activated.add(index)
        keep_alive = []
        for name in self.inputs:
            array = cast_feed(feeds[name], self.input_dtypes.get(name))
            tensor = torch.from_numpy(np.ascontiguousarray(array)).cuda(non_blocking=True)
            keep_alive.append(tensor)
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr() if tensor.numel() else 0)
        outputs = []
        for name in self.outputs:
            shape = tuple(context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            out = torch.empty(shape, dtype=dtype, device="cuda")
            outputs.append(out)
            context.set_tensor_address(name, out.data_ptr() if out.numel() else 0)
        if not context.execute_async_v3(stream.cuda_stream):
            raise ArtifactError("TensorRT execution failed")
        stream.synchronize()
        return [
            o.float().cpu().numpy() if o.dtype in (torch.float16, torch.bfloat16) else o.cpu().numpy() for o in outputs
        ]


class TrtGraphs:
    def __init__(self, artifact: Artifact):
        import tensorrt as trt
        import torch

        check_engine_compat(artifact.manifest.get("engines"), current_device())
        plan = artifact.manifest["trt_plan"]
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engines = {
            name: _Engine(
                self._runtime,
                artifact.root / spec["engine"],
                spec["profiles"],
                artifact.root / spec["onnx"] if spec.get("strip_weights") else None,
                self._logger,
            )
            for name, spec in plan["engines"].items()
        }
        self.stream = torch.cuda.Stream()
        self._past = kv_names(artifact.runtime["num_layers"], "past")
        self.device = artifact.manifest["engines"]

    def synchronize(self) -> None:
        self.stream.synchronize()

    def run_graph(self, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Any engine by graph name (bucketed artifacts: encoder, selectors, projector; grid families:
        ``vision_<h>x<w>`` on ``pixel_patches``). Indices come back as int64 whatever the engine's type."""
        outputs = self.engines[name].run(feeds, self.stream)
        return [o.astype(np.int64) if np.issubdtype(o.dtype, np.integer) else o for o in outputs]

    def vision(self, pixel_values):
        features, kept = self.engines[VISION].run({"pixel_values": pixel_values}, self.stream)
        return features, kept.astype(np.int64)

    def embed(self, input_ids, image_features):
        (embeds,) = self.engines[EMBED].run({"input_ids": input_ids, "image_features": image_features}, self.stream)
        return embeds

    def decoder(self, embeds, attention_mask, position_ids, past):
        feeds = {"inputs_embeds": embeds, "attention_mask": attention_mask, "position_ids": position_ids}
        feeds.update(zip(self._past, past, strict=True))
        logits, *present = self.engines[DECODER].run(feeds, self.stream)
        return logits, present

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": "tensorrt",
            "provider": f"TensorRT {self.device.get('tensorrt_version')}",
            "requested_provider": "tensorrt",
            "fell_back": False,
            "gpu": self.device.get("gpu_name"),
        }
