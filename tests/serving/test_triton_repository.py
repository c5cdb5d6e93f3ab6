"""`tpc export-triton`: the repository's configs, its graph models against the ONNX graphs, and the
Python model's generation loop run over BLS against ONNX Runtime sessions of the repository's graphs."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format

from tests.conftest import ASSETS, run_cli
from tests.serving.conftest import noise_image
from tpc.errors import ExportError
from tpc.runtimes.prompting import load_image
from tpc.runtimes.sampling import Sampler

pytest.importorskip("tritonclient.grpc.model_config_pb2")
from tritonclient.grpc import model_config_pb2 as pb  # noqa: E402
from tritonclient.utils import triton_to_np_dtype  # noqa: E402

from tpc.serving.triton_config import GraphIO, GraphTensor, graph_model_config, render, validate_config  # noqa: E402
from tpc.serving.triton_repository import export_repository, external_data_files  # noqa: E402

PROMPT = "What is in the picture?"


def config_of(path: Path):
    return text_format.Parse((path / "config.pbtxt").read_text(), pb.ModelConfig())


def encoded(image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _data_type(name: str) -> str:
    return pb.DataType.Name(name)[len("TYPE_") :].replace("STRING", "BYTES")


class FakeTriton:
    """``triton_python_backend_utils`` for the exported model.py: BLS requests go to ONNX Runtime sessions
    of the repository's graph models, and are checked against their config.pbtxt as Triton checks them
    (input names, types, the batch axis and ``max_batch_size``, dims, reshape; output dims)."""

    def __init__(self, repository: Path):
        self.repository = repository
        self.sessions: dict[str, tuple] = {}
        self.calls: dict[str, int] = {}
        fake = self

        class Tensor:
            def __init__(self, name, array):
                self._name, self._array = name, np.asarray(array)

            def name(self):
                return self._name

            def as_numpy(self):
                return self._array

        class TritonError:
            def __init__(self, message):
                self._message = message

            def message(self):
                return self._message

        class InferenceResponse:
            def __init__(self, output_tensors, error=None):
                self.output_tensors, self.error_value = list(output_tensors), error

            def has_error(self):
                return self.error_value is not None

            def error(self):
                return self.error_value

        class InferenceRequest:
            def __init__(self, model_name, requested_output_names, inputs):
                self.model_name, self.requested, self.inputs = model_name, list(requested_output_names), list(inputs)

            def exec(self):
                outputs = fake.run(self.model_name, {t.name(): t.as_numpy() for t in self.inputs}, self.requested)
                return InferenceResponse([Tensor(n, v) for n, v in outputs.items()])

        def by_name(container, name):
            tensors = container.inputs if hasattr(container, "inputs") else container.output_tensors
            return next((t for t in tensors if t.name() == name), None)

        self.module = types.ModuleType("triton_python_backend_utils")
        self.module.__dict__.update(
            Tensor=Tensor,
            TritonError=TritonError,
            InferenceResponse=InferenceResponse,
            InferenceRequest=InferenceRequest,
            get_input_tensor_by_name=by_name,
            get_output_tensor_by_name=by_name,
        )

    def run(self, model: str, feeds: dict[str, np.ndarray], requested: list[str]) -> dict[str, np.ndarray]:
        import onnxruntime as ort

        if model not in self.sessions:
            config = config_of(self.repository / model)
            session = ort.InferenceSession(
                str(self.repository / model / "1" / config.default_model_filename), providers=["CPUExecutionProvider"]
            )
            self.sessions[model] = (config, session)
        config, session = self.sessions[model]
        self.calls[model] = self.calls.get(model, 0) + 1
        declared = {t.name: t for t in config.input}
        assert set(feeds) == {n for n, t in declared.items() if not t.optional or n in feeds}, (model, sorted(feeds))
        batch = None
        model_feeds = {}
        for name, array in feeds.items():
            spec = declared[name]
            assert array.dtype == triton_to_np_dtype(_data_type(spec.data_type)), (model, name, array.dtype)
            shape = list(array.shape)
            if config.max_batch_size:
                batch = shape[0] if batch is None else batch
                assert shape[0] == batch and 1 <= batch <= config.max_batch_size, (model, name, shape)
                shape = shape[1:]
            assert len(shape) == len(spec.dims), (model, name, array.shape, list(spec.dims))
            assert all(d in (-1, s) for d, s in zip(spec.dims, shape, strict=True)), (model, name, array.shape)
            if spec.HasField("reshape"):
                array = array.reshape(([batch] if config.max_batch_size else []) + list(spec.reshape.shape))
            model_feeds[name] = array
        values = dict(zip([o.name for o in session.get_outputs()], session.run(None, model_feeds), strict=True))
        outputs = {}
        for spec in config.output:
            if spec.name not in requested:
                continue
            value = values[spec.name]
            lead = [value.shape[0]] if config.max_batch_size else []
            if spec.HasField("reshape"):
                value = value.reshape(lead + list(spec.dims))
            rest = list(value.shape[len(lead) :])
            assert len(rest) == len(spec.dims) and all(d in (-1, s) for d, s in zip(spec.dims, rest, strict=True))
            outputs[spec.name] = value
        assert set(outputs) == set(requested), (model, requested)
        return outputs


def load_exported_model(repository: Path, name: str, fake: FakeTriton, monkeypatch):
    """The repository's own model.py, imported as Triton's Python backend would, then initialised."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake.module)
    spec = importlib.util.spec_from_file_location(
        f"exported_{name.replace('-', '_')}", repository / name / "1" / "model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_repository": str(repository / name), "model_version": "1", "model_config": "{}"})
    return model


def request(fake: FakeTriton, prompt: str, image: bytes | None = None, **options):
    pb_utils = fake.module
    tensors = [pb_utils.Tensor("prompt", np.array([[prompt.encode()]], dtype=np.object_))]
    if image is not None:
        tensors.append(pb_utils.Tensor("image", np.array([[image]], dtype=np.object_)))
    types_ = {"max_new_tokens": np.int32, "temperature": np.float32, "top_p": np.float32, "seed": np.int64}
    types_["keep"] = np.int32
    tensors += [pb_utils.Tensor(k, np.array([[v]], dtype=types_[k])) for k, v in options.items()]
    return pb_utils.InferenceRequest("", [], tensors)


def generated(response) -> list[int]:
    ids = next(t for t in response.output_tensors if t.name() == "token_ids").as_numpy()
    assert ids.shape[0] == 1
    return [int(i) for i in ids[0] if i != -1]


@pytest.fixture(params=["bucketed_dir", "multicrop_dir"])
def exported(request, tmp_path):
    """(artifact, repository, summary) for the single-crop (bucketed) and the anyres tiny artifacts."""
    artifact = request.getfixturevalue(request.param)
    summary = export_repository(artifact, tmp_path / "repo", instances=2, max_batch=4)
    return artifact, tmp_path / "repo", summary


def test_configs_pass_the_schema_and_declare_what_the_onnx_graphs_take(exported):
    artifact, repository, summary = exported
    manifest = json.loads((artifact / "manifest.json").read_text())
    crops = manifest["runtime"]["image_layout"]["crops_max"]
    assert {m for m, _, _ in summary.models} == {summary.name} | {f"{summary.name}_{g}" for g in manifest["graphs"]}
    for graph, spec in manifest["graphs"].items():
        directory = repository / f"{summary.name}_{graph}"
        config = validate_config((directory / "config.pbtxt").read_text(), str(directory), directory.name)
        assert config.backend == "onnxruntime" and config.instance_group[0].count == 2
        model = onnx.load(str(directory / "1" / config.default_model_filename), load_external_data=False)
        initializers = {i.name for i in model.graph.initializer}
        graph_inputs = [v for v in model.graph.input if v.name not in initializers]
        assert config.max_batch_size == 4 * crops and config.dynamic_batching.max_queue_delay_microseconds > 0
        for declared, value in [
            *zip(config.input, graph_inputs, strict=True),
            *zip(config.output, model.graph.output, strict=True),
        ]:
            assert declared.name == value.name
            elem = value.type.tensor_type.elem_type
            assert triton_to_np_dtype(_data_type(declared.data_type)) == onnx.helper.tensor_dtype_to_np_dtype(elem)
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
            assert dims[0] == -1 and list(declared.dims) == (dims[1:] or [1])
        # the graph and its weights are the artifact's own files, hard-linked (one tmp filesystem here)
        for rel in [spec["file"], *external_data_files(artifact / spec["file"])]:
            assert os.path.samefile(directory / "1" / rel, artifact / rel)
    generation = validate_config((repository / summary.name / "config.pbtxt").read_text(), "gen", summary.name)
    assert generation.backend == "python" and generation.max_batch_size == 4
    assert [t.name for t in generation.input if not t.optional] == ["prompt"]
    carried = repository / summary.name / "1" / "artifact"
    assert (carried / "manifest.json").is_file() and (carried / "processor" / "tokenizer.json").is_file()
    assert summary.linked > 0 and summary.copied == 0


def test_python_model_generates_what_compiled_model_generates(exported, monkeypatch):
    from tpc.runtimes.compiled_model import CompiledModel

    artifact, repository, summary = exported
    fake = FakeTriton(repository)
    model = load_exported_model(repository, summary.name, fake, monkeypatch)
    demo = load_image(ASSETS / "demo.png")
    other = noise_image(300, 700, seed=1)  # another aspect ratio: another crop grid on the anyres artifact
    requests = [
        request(fake, PROMPT, encoded(demo), max_new_tokens=6),
        request(fake, "Describe it.", encoded(other, "JPEG"), max_new_tokens=6),
        request(fake, PROMPT, b"not a picture", max_new_tokens=6),
        request(fake, PROMPT, encoded(demo), max_new_tokens=6, temperature=0.9, top_p=0.8, seed=7),
        request(fake, "Say something.", max_new_tokens=6),
    ]
    responses = model.execute(requests)
    assert len(responses) == len(requests)
    bad = responses[2]
    assert bad.has_error() and "not a picture" in bad.error().message() and not bad.output_tensors
    reference = CompiledModel.load(artifact)
    jpeg = load_image(io.BytesIO(encoded(other, "JPEG")))
    together = reference.generate([PROMPT, "Describe it."], [demo, jpeg], max_new_tokens=6)
    assert [generated(responses[0]), generated(responses[1])] == together.token_ids
    text = next(t for t in responses[0].output_tensors if t.name() == "text").as_numpy()
    assert text.shape == (1, 1) and text[0, 0].decode() == together.text[0]
    sampled = reference.generate([PROMPT], [demo], max_new_tokens=6, sampler=Sampler(0.9, 0.8, 7))
    assert generated(responses[3]) == sampled.token_ids[0]
    assert generated(responses[4]) == reference.generate(["Say something."], None, max_new_tokens=6).token_ids[0]
    # every graph the artifact has was called through a graph model, none directly
    assert set(fake.calls) <= {m for m, backend, _ in summary.models if backend == "onnxruntime"}
    assert any(m.endswith("_decoder") for m in fake.calls) and len(fake.calls) >= 3


def test_keep_picks_a_bucket_per_request(bucketed_dir, tmp_path, monkeypatch):
    from tpc.runtimes.compiled_model import CompiledModel

    summary = export_repository(bucketed_dir, tmp_path / "repo")
    fake = FakeTriton(tmp_path / "repo")
    model = load_exported_model(tmp_path / "repo", summary.name, fake, monkeypatch)
    demo = load_image(ASSETS / "demo.png")
    small, default = model.execute(
        [request(fake, PROMPT, encoded(demo), max_new_tokens=5, keep=20), request(fake, PROMPT, encoded(demo))]
    )
    reference = CompiledModel.load(bucketed_dir)
    reference.set_budget(keep=32)
    assert generated(small) == reference.generate([PROMPT], [demo], max_new_tokens=5).token_ids[0]
    assert any(m.endswith("select_k32") for m in fake.calls)
    reference.set_budget(keep=reference.runtime["keep"])
    assert generated(default) == reference.generate([PROMPT], [demo]).token_ids[0]


def test_a_batch_only_tensor_travels_as_rows_of_one(tmp_path, monkeypatch):
    """A rank-1 [batch] input and output (in-LLM selectors' image_start) is declared dims [1] + reshape []."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    start = helper.make_tensor_value_info("start", TensorProto.INT64, ["batch"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    count = helper.make_tensor_value_info("count", TensorProto.INT64, ["batch"])
    nodes = [
        helper.make_node("Cast", ["start"], ["start_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["start_f", "axis"], ["column"]),
        helper.make_node("Mul", ["x", "column"], ["y"]),
        helper.make_node("Add", ["start", "start"], ["count"]),
    ]
    axis = helper.make_tensor("axis", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(nodes, "rows", [x, start], [y, count], initializer=[axis])
    model_dir = tmp_path / "repo" / "m_select"
    (model_dir / "1").mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model_dir / "1" / "g.onnx"))
    io = GraphIO(
        (GraphTensor("x", "TYPE_FP32", ("batch", 3)), GraphTensor("start", "TYPE_INT64", ("batch",))),
        (GraphTensor("y", "TYPE_FP32", ("batch", 3)), GraphTensor("count", "TYPE_INT64", ("batch",))),
    )
    config = graph_model_config(
        "m_select", io, "g.onnx", platform=None, max_batch=4, instances=1, kind="KIND_CPU", queue_delay_us=100
    )
    (model_dir / "config.pbtxt").write_text(render(config))
    parsed = validate_config(render(config), "m_select", "m_select")
    assert [list(t.dims) for t in parsed.input] == [[3], [1]] and parsed.input[1].HasField("reshape")
    fake = FakeTriton(tmp_path / "repo")
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake.module)
    from tpc.serving.triton_python_model import BlsGraphs

    spec = {"model": "m_select", "inputs": {"x": "float32", "start": "int64"}, "outputs": ["y", "count"]}
    spec["row_tensors"] = ["start", "count"]
    graphs = BlsGraphs(fake.module, {"select": spec}, num_layers=1)
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    y_out, count_out = graphs.run_graph("select", {"x": values, "start": np.array([2, 5])})
    assert np.array_equal(y_out, values * np.array([[2.0], [5.0]])) and count_out.tolist() == [4, 10]


def test_engines_export_as_tensorrt_plans(bucketed_dir, tmp_path, capsys):
    """An artifact with built engines: tensorrt_plan models on GPU instances, every profile, batch from the profiles."""
    import shutil

    from tpc.manifest import write_manifest

    artifact = tmp_path / "trt"
    shutil.copytree(bucketed_dir, artifact)
    manifest = json.loads((artifact / "manifest.json").read_text())
    plan = {}
    (artifact / "engines").mkdir()
    for graph, spec in manifest["graphs"].items():
        engine = f"engines/{graph}.plan"
        (artifact / engine).write_bytes(b"serialized engine bytes: the exporter places them, Triton reads them")
        shapes = {i["name"]: {"min": [1], "opt": [2], "max": [2 if graph == "decoder" else 3]} for i in spec["inputs"]}
        plan[graph] = {"onnx": spec["file"], "engine": engine, "profiles": [{"name": "a", "shapes": shapes}] * 2}
    manifest.update(
        target="trt",
        trt_plan={"engines": plan, "limits": {"max_batch": 3}},
        engines={"tensorrt_version": "10.9", "gpu_name": "x"},
    )
    write_manifest(artifact, {k: v for k, v in manifest.items() if k not in ("files", "schema_version")})
    summary = export_repository(artifact, tmp_path / "repo", max_batch=4)
    for graph in manifest["graphs"]:
        config = config_of(tmp_path / "repo" / f"{summary.name}_{graph}")
        assert config.platform == "tensorrt_plan" and config.default_model_filename == f"{graph}.plan"
        assert config.max_batch_size == (2 if graph == "decoder" else 3)
        assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
        assert list(config.instance_group[0].profile) == ["0", "1"]
        assert os.path.samefile(
            tmp_path / "repo" / f"{summary.name}_{graph}" / "1" / f"{graph}.plan", artifact / plan[graph]["engine"]
        )
    assert config_of(tmp_path / "repo" / summary.name).max_batch_size == 3  # the plan's prompts at once
    ort = export_repository(artifact, tmp_path / "ort", runtime="ort")
    assert {backend for _, backend, _ in ort.models} == {"python", "onnxruntime"}
    code, _, err = run_cli(["export-triton", str(artifact), "-o", str(tmp_path / "cpu"), "--device", "cpu"], capsys)
    assert code == 2 and "--runtime ort" in err


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    return run_cli(["export-triton", *argv], capsys)


def test_bad_input_is_one_line_and_leaves_nothing_half_written(bucketed_dir, tmp_path, capsys, monkeypatch):
    code, _, err = run([str(tmp_path), "-o", str(tmp_path / "r")], capsys)
    assert code == 4 and err.startswith("error: ") and "not a tpc artifact" in err and len(err.splitlines()) == 1
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    code, _, err = run([str(bucketed_dir), "-o", str(taken)], capsys)
    assert code == 2 and "--force" in err and (taken / "keep.txt").read_text() == "mine"
    code, _, err = run([str(bucketed_dir), "-o", str(bucketed_dir / "inside")], capsys)
    assert code == 2 and "inside" in err
    code, _, err = run([str(bucketed_dir), "-o", str(tmp_path / "r"), "--max-batch", "0"], capsys)
    assert code == 2 and "--max-batch" in err

    import tpc.serving.triton_repository as repository

    real, calls = repository.read_graph_io, []

    def failing(path):  # the third graph cannot be read: the export stops after writing two models
        calls.append(path)
        if len(calls) == 3:
            raise ExportError(f"{path.name}: unreadable")
        return real(path)

    monkeypatch.setattr(repository, "read_graph_io", failing)
    code, _, err = run([str(bucketed_dir), "-o", str(taken), "--force"], capsys)
    assert code == 6 and "unreadable" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no temporary directory left behind
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]  # the old contents are untouched
    monkeypatch.setattr(repository, "read_graph_io", real)
    code, out, err = run([str(bucketed_dir), "-o", str(taken), "--force"], capsys)
    assert code == 0 and "validated" in out and not (taken / "keep.txt").exists()


def test_validate_config_refuses_what_triton_would():
    good = 'name: "m" backend: "onnxruntime" max_batch_size: 2 input { name: "x" data_type: TYPE_FP32 dims: -1 }'
    good += ' output { name: "y" data_type: TYPE_FP32 dims: 3 } dynamic_batching { }'
    assert validate_config(good, "m", "m").max_batch_size == 2
    cases = {
        good.replace("max_batch_size: 2", "max_batch_size: 0"): "dynamic_batching needs",
        good.replace("TYPE_FP32 dims: 3", "TYPE_FP32"): "no dims",
        good.replace("dims: 3", "dims: 0"): "each must be -1 or positive",
        good.replace('backend: "onnxruntime"', ""): "neither backend nor platform",
        good + " instance_group { count: 1 profile: '0' }": "TensorRT plans only",
        good.replace("dims: -1", "dims: [-1"): "not a valid Triton model config",
        good.replace('name: "y"', 'name: "x"'): "repeats",
    }
    for text, message in cases.items():
        with pytest.raises(ExportError, match=message):
            validate_config(text, "m", "m")
    with pytest.raises(ExportError, match="differs from its directory"):
        validate_config(good, "m", "other")
