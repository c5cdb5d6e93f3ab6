"""Triton's own server binary (as PyTriton ships it) over KServe v2, with tritonclient on HTTP and gRPC.

* ``tpc serve --triton`` (``TritonService``): answers equal ``CompiledModel.generate``;
* the ``tpc export-triton`` repository loaded into that binary: its model.py, unchanged, runs the
  generation loop with real BLS calls. The binary has no onnxruntime backend (that one ships in
  the Triton container), so the graph models are swapped for Python-backend models that run the
  same ONNX files with ONNX Runtime; the configs, the generation model and BLS are Triton's own.

When the binary cannot start here the tests skip with its error.
"""

from __future__ import annotations

import contextlib
import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from tests.conftest import ASSETS
from tests.serving.conftest import noise_image
from tpc.runtimes.prompting import load_image
from tpc.runtimes.sampling import Sampler

pytest.importorskip("pytriton")
http = pytest.importorskip("tritonclient.http")
grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import model_config_pb2 as pb  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tpc.serving.triton_server import TritonService, TritonStartError, _free_ports, _library_path_for_stub  # noqa: E402

PROMPT = "What is in the picture?"
GRAPH_PROXY = '''
import json
from pathlib import Path

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Runs the graph model's ONNX file with ONNX Runtime, as the onnxruntime backend would."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        version = Path(args["model_repository"]) / str(args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        path = version / config["parameters"]["onnx_file"]["string_value"]
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.ranks = {i.name: len(i.shape) for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.rows = {t["name"] for t in (*config["input"], *config["output"]) if "reshape" in t}

    def execute(self, requests):
        responses = []
        for request in requests:
            feeds = {}
            for name, rank in self.ranks.items():
                array = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                feeds[name] = array.reshape(array.shape[:rank])
            values = self.session.run(None, feeds)
            tensors = [
                pb_utils.Tensor(n, v.reshape(*v.shape, 1) if n in self.rows else v)
                for n, v in zip(self.outputs, values)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
'''


def encoded(image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def inputs(client, prompt: str, image: bytes | None = None, **options) -> list:
    types = {"max_new_tokens": ("INT32", np.int32), "temperature": ("FP32", np.float32)}
    types.update(top_p=("FP32", np.float32), seed=("INT64", np.int64), keep=("INT32", np.int32))
    tensors = [("prompt", "BYTES", np.array([[prompt.encode()]], dtype=np.object_))]
    if image is not None:
        tensors.append(("image", "BYTES", np.array([[image]], dtype=np.object_)))
    tensors += [(k, types[k][0], np.array([[v]], dtype=types[k][1])) for k, v in options.items()]
    made = []
    for name, kind, value in tensors:
        tensor = client.InferInput(name, list(value.shape), kind)
        tensor.set_data_from_numpy(value)
        made.append(tensor)
    return made


def ask(module, url: str, model: str, prompt: str, image: bytes | None = None, **options) -> tuple[list[int], str]:
    client = module.InferenceServerClient(url)
    try:
        result = client.infer(model, inputs(module, prompt, image, **options))
    finally:
        client.close()
    ids, text = result.as_numpy("token_ids"), result.as_numpy("text")
    assert ids.shape[0] == 1 and text.shape == (1, 1)
    return [int(i) for i in ids[0] if i != -1], text[0, 0].decode()


def reference(model, prompt, image, max_new_tokens, sampler=None, keep=None) -> tuple[list[int], str]:
    if model.bucketed is not None:
        model.set_budget(keep=keep if keep is not None else model.runtime["keep"])
    result = model.generate([prompt], [image] if image is not None else None, max_new_tokens, sampler)
    return result.token_ids[0], result.text[0]


@contextlib.contextmanager
def started(service: TritonService):
    try:
        endpoint = service.start()
    except TritonStartError as exc:
        pytest.skip(f"Triton's server binary cannot start here: {exc}")
    try:
        yield endpoint
    finally:
        service.stop()


@pytest.fixture(scope="module")
def served(bucketed_dir):
    with started(TritonService(bucketed_dir, max_batch=4, threads=1)) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def oracle(bucketed_dir):
    from tpc.runtimes.compiled_model import CompiledModel

    return CompiledModel.load(bucketed_dir, threads=1)


def test_http_and_grpc_answer_what_compiled_model_generates(served, oracle):
    demo = load_image(ASSETS / "demo.png")
    png = encoded(demo)
    assert ask(http, served.http_url, served.model_name, PROMPT, png, max_new_tokens=6) == reference(
        oracle, PROMPT, demo, 6
    )
    sampled = dict(max_new_tokens=6, temperature=0.8, top_p=0.9, seed=5)
    assert ask(grpc, served.grpc_url, served.model_name, PROMPT, png, **sampled) == reference(
        oracle, PROMPT, demo, 6, Sampler(0.8, 0.9, 5)
    )
    assert ask(grpc, served.grpc_url, served.model_name, PROMPT, png, max_new_tokens=4, keep=32) == reference(
        oracle, PROMPT, demo, 4, keep=32
    )
    assert ask(http, served.http_url, served.model_name, "Say something.", max_new_tokens=4) == reference(
        oracle, "Say something.", None, 4
    )


def test_concurrent_requests_get_their_own_answers(served, oracle):
    pictures = [noise_image(336, 336, seed=s) for s in (1, 2)]
    expected = [reference(oracle, PROMPT, p, 5) for p in pictures]
    with ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(
                lambda p: ask(grpc, served.grpc_url, served.model_name, PROMPT, encoded(p), max_new_tokens=5), pictures
            )
        )
    assert answers == expected and answers[0] != answers[1]


def test_a_bad_request_is_an_error_and_the_server_keeps_serving(served, oracle):
    with pytest.raises(InferenceServerException, match="not a picture PIL can read"):
        ask(http, served.http_url, served.model_name, PROMPT, b"not a picture")
    with pytest.raises(InferenceServerException, match="empty"):
        ask(grpc, served.grpc_url, served.model_name, "   ")
    client = http.InferenceServerClient(served.http_url)
    try:
        assert client.is_server_live() and client.is_model_ready(served.model_name)
    finally:
        client.close()
    assert ask(http, served.http_url, served.model_name, "Say something.", max_new_tokens=3) == reference(
        oracle, "Say something.", None, 3
    )


def test_a_taken_port_is_one_error_before_triton_starts(bucketed_dir):
    import socket

    from tpc.errors import UsageError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        service = TritonService(bucketed_dir, grpc_port=taken.getsockname()[1], threads=1)
        with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{taken.getsockname()[1]}"):
            service.start()
    assert service.triton is None


def test_multicrop_artifact_served(multicrop_dir):
    from tpc.runtimes.compiled_model import CompiledModel

    wide = noise_image(300, 700, seed=3)
    with started(TritonService(multicrop_dir, max_batch=2, threads=1)) as endpoint:
        answer = ask(http, endpoint.http_url, endpoint.model_name, PROMPT, encoded(wide), max_new_tokens=5)
    assert answer == reference(CompiledModel.load(multicrop_dir, threads=1), PROMPT, wide, 5)


def test_exported_repository_runs_in_tritons_binary(multicrop_dir, tmp_path):
    from pytriton.triton import Triton, TritonConfig

    from tpc.runtimes.compiled_model import CompiledModel
    from tpc.serving.triton_repository import export_repository

    repository = tmp_path / "repo"
    summary = export_repository(multicrop_dir, repository, max_batch=2)
    for model, backend, _ in summary.models:
        if backend == "onnxruntime":
            path = repository / model / "config.pbtxt"
            config = text_format.Parse(path.read_text(), pb.ModelConfig())
            onnx_file = config.default_model_filename
            for field in ("default_model_filename", "optimization", "parameters"):
                config.ClearField(field)
            config.backend = "python"
            config.parameters["onnx_file"].string_value = onnx_file
            path.write_text(text_format.MessageToString(config))
            (repository / model / "1" / "model.py").write_text(GRAPH_PROXY)
    _library_path_for_stub()
    ports = _free_ports("127.0.0.1", 2)
    config = TritonConfig(
        model_repository=repository,
        http_address="127.0.0.1",
        http_port=ports[0],
        grpc_address="127.0.0.1",
        grpc_port=ports[1],
        allow_metrics=False,
        exit_timeout_secs=3,
    )
    triton = Triton(config=config)
    try:
        triton.run()
    except Exception as exc:
        triton.stop()
        pytest.skip(f"Triton's server binary cannot start here: {type(exc).__name__}: {exc}")
    tall, wide = noise_image(700, 300, seed=4), noise_image(336, 336, seed=5)
    try:
        client = grpc.InferenceServerClient(f"127.0.0.1:{ports[1]}")
        deadline = time.monotonic() + 120
        while not client.is_model_ready(summary.name):
            assert time.monotonic() < deadline, "the exported models did not load"
            time.sleep(0.2)
        client.close()
        answers = [
            ask(grpc, f"127.0.0.1:{ports[1]}", summary.name, PROMPT, encoded(tall), max_new_tokens=5),
            ask(http, f"127.0.0.1:{ports[0]}", summary.name, "Describe it.", encoded(wide), max_new_tokens=5),
        ]
        with pytest.raises(InferenceServerException, match="not a picture"):
            ask(http, f"127.0.0.1:{ports[0]}", summary.name, PROMPT, b"\x89PNG broken")
    finally:
        triton.stop()
    oracle = CompiledModel.load(multicrop_dir, threads=1)
    assert answers == [reference(oracle, PROMPT, tall, 5), reference(oracle, "Describe it.", wide, 5)]
    # the model Triton ran is the exported file, byte for byte the module in the package
    from tpc.serving import triton_python_model

    assert (repository / summary.name / "1" / "model.py").read_bytes() == Path(
        triton_python_model.__file__
    ).read_bytes()
