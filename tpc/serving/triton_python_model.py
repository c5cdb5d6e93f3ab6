"""The Python-backend model of an exported Triton repository: the generation loop over BLS calls.

``tpc export-triton`` copies this file as ``NAME/1/model.py``. It runs the very
``CompiledModel.generate`` that ``tpc run`` runs (preprocessing, vision, the multi-crop
layout, prefill, decode steps, sampling); only the graphs object differs: ``BlsGraphs`` sends
each graph call as a BLS request to that graph's own model in the repository (onnxruntime or
TensorRT backend), so Triton schedules, batches and places the graphs. Requests and batching:
``tpc.serving.triton_requests``.

Triton's Python environment needs ``tpc`` importable without torch (``pip install --no-deps
tpc`` plus numpy, pillow, tokenizers, jinja2; see the README), or an ``EXECUTION_ENV_PATH``
archive holding it. ``triton_python_backend_utils`` is the module Triton's Python backend
provides; it is imported when Triton initialises the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tpc.artifact_layout import kv_names
from tpc.errors import TpcError
from tpc.manifest import load_artifact
from tpc.runtimes.compiled_model import PROCESSOR_DIR, CompiledModel
from tpc.runtimes.ort import OrtGraphs
from tpc.runtimes.prompting import PromptEncoder
from tpc.serving.triton_requests import INPUTS, generate_batch, parse_request

METADATA = "tpc_model.json"


class BlsGraphs(OrtGraphs):
    """``OrtGraphs``' vision / embed / decoder methods, each graph run by a BLS request.

    Only ``run_graph`` differs from ONNX Runtime's: feeds are cast to the graph model's
    declared input types (half-precision graphs take half floats), tensors Triton declares
    as ``dims: [1]`` + ``reshape: []`` travel with a trailing axis of 1.
    """

    def __init__(self, pb_utils, graphs: dict[str, dict], num_layers: int):
        self.pb_utils = pb_utils
        self.graphs = graphs
        self._past_names = kv_names(num_layers, "past")
        self.provider = self.requested_provider = "triton"
        self.fell_back = False

    def run_graph(self, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        pb = self.pb_utils
        spec = self.graphs[name]
        rows = set(spec["row_tensors"])
        inputs = []
        for key, value in feeds.items():
            array = np.ascontiguousarray(value, dtype=spec["inputs"][key])
            inputs.append(pb.Tensor(key, array.reshape(*array.shape, 1) if key in rows else array))
        request = pb.InferenceRequest(model_name=spec["model"], requested_output_names=spec["outputs"], inputs=inputs)
        response = request.exec()
        if response.has_error():
            raise TpcError(f"graph model {spec['model']}: {response.error().message()}")
        outputs = []
        for key in spec["outputs"]:
            array = pb.get_output_tensor_by_name(response, key).as_numpy()
            outputs.append(array.reshape(array.shape[:-1]) if key in rows else array)
        return outputs

    def describe(self) -> dict:
        return {"runtime": "triton-bls", "provider": "triton", "requested_provider": "triton", "fell_back": False}


def load_model(version_dir: Path, pb_utils) -> CompiledModel:
    """The artifact carried in the version directory, its graphs served by the repository's graph models."""
    metadata = json.loads((version_dir / METADATA).read_text())
    artifact = load_artifact(version_dir / metadata["artifact"], check_hashes=False)  # graphs live elsewhere
    graphs = BlsGraphs(pb_utils, metadata["graphs"], artifact.runtime["num_layers"])
    encoder = PromptEncoder.from_dir(artifact.root / PROCESSOR_DIR, artifact.runtime)
    return CompiledModel(artifact, graphs, encoder)


class TritonPythonModel:
    """Triton's Python-backend entry points: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb_utils = pb_utils
        self.model = load_model(Path(args["model_repository"]) / str(args["model_version"]), pb_utils)

    def execute(self, requests: list) -> list:
        pb = self.pb_utils
        parsed = []
        for request in requests:
            tensors = {}
            for spec in INPUTS:
                tensor = pb.get_input_tensor_by_name(request, spec.name)
                if tensor is not None:
                    tensors[spec.name] = tensor.as_numpy()
            try:
                parsed.append(parse_request(tensors))
            except TpcError as exc:
                parsed.append(exc)
        responses = []
        for output in generate_batch(self.model, parsed):
            if isinstance(output, TpcError):
                responses.append(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(str(output))))
            else:
                tensors = [pb.Tensor(key, value) for key, value in output.items()]
                responses.append(pb.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        self.model = None
