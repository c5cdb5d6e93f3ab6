"""Triton model configurations (``config.pbtxt``) for an artifact's graphs and its generation model.

A graph's inputs and outputs, their types and dimensions are read from the ONNX graph itself.
When every input and output starts with the same symbolic dimension, that axis is Triton's
batch axis: ``max_batch_size`` > 0 and dynamic batching. Otherwise ``max_batch_size`` is 0
and the dims are the full shape. A tensor with no dims left (rank 1 when batched, a scalar
otherwise) is declared ``dims: [1]`` with ``reshape: { shape: [] }``, as Triton requires, so a
caller sends it as [B, 1] (or [1]).

Configs are built as ``model_config_pb2.ModelConfig`` messages (tritonclient's copy of
Triton's own schema), written with ``text_format`` and validated by parsing the file back
(``validate_config``) plus the checks Triton makes when it loads a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tpc.errors import ExportError, UsageError
from tpc.serving.triton_requests import INPUTS, OUTPUTS

# ONNX TensorProto element type -> Triton data type
_ONNX_TYPES = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    8: "TYPE_STRING",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}
NUMPY_NAMES = {
    "TYPE_FP32": "float32",
    "TYPE_FP16": "float16",
    "TYPE_FP64": "float64",
    "TYPE_INT64": "int64",
    "TYPE_INT32": "int32",
    "TYPE_INT16": "int16",
    "TYPE_INT8": "int8",
    "TYPE_UINT8": "uint8",
    "TYPE_UINT16": "uint16",
    "TYPE_UINT32": "uint32",
    "TYPE_UINT64": "uint64",
    "TYPE_BOOL": "bool",
    "TYPE_STRING": "object",
    "TYPE_BF16": "float32",  # numpy has no bfloat16: the caller sends float32 and the graph casts
}
# the manifest's ONNX Runtime optimisation level -> the onnxruntime backend's ``optimization.graph.level``
_ORT_LEVELS = {"disabled": 2, "basic": -1, "extended": 1}
KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}


@dataclass(frozen=True)
class GraphTensor:
    name: str
    data_type: str  # TYPE_FP32, ...
    shape: tuple[int | str | None, ...]  # int: fixed, str: a symbolic dimension, None: unnamed dynamic


@dataclass(frozen=True)
class GraphIO:
    inputs: tuple[GraphTensor, ...]
    outputs: tuple[GraphTensor, ...]

    @property
    def batched(self) -> bool:
        """True when every tensor's first axis is one shared symbolic dimension (Triton's batch axis)."""
        firsts = {t.shape[0] if t.shape else 1 for t in (*self.inputs, *self.outputs)}
        return len(firsts) == 1 and isinstance(next(iter(firsts)), str)


def model_config_pb2():
    try:
        from tritonclient.grpc import model_config_pb2 as pb
    except ImportError as exc:
        raise UsageError(
            f"Triton support needs tritonclient ({exc.name} is missing): pip install 'tpc[triton]'"
        ) from None
    return pb


def read_graph_io(path: Path) -> GraphIO:
    """Inputs (initializers excluded) and outputs of an ONNX graph, without loading its weights."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def tensor(value) -> GraphTensor:
        kind = value.type.tensor_type
        if kind.elem_type not in _ONNX_TYPES:
            raise ExportError(f"{path.name}: {value.name} has ONNX element type {kind.elem_type}, unknown to Triton")
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in kind.shape.dim)
        return GraphTensor(value.name, _ONNX_TYPES[kind.elem_type], shape)

    return GraphIO(
        tuple(tensor(v) for v in graph.input if v.name not in initializers), tuple(tensor(v) for v in graph.output)
    )


def graph_model_config(
    name: str,
    io: GraphIO,
    model_file: str,
    *,
    platform: str | None,
    max_batch: int,
    instances: int,
    kind: str,
    queue_delay_us: int,
    profiles: int = 0,
    session: dict | None = None,
):
    """Config of one graph: ``platform`` is ``tensorrt_plan`` for an engine, None for the onnxruntime backend."""
    pb = model_config_pb2()
    config = pb.ModelConfig(name=name, default_model_filename=model_file)
    if platform is None:
        config.backend = "onnxruntime"
    else:
        config.platform = platform
    batched = io.batched and max_batch > 0
    config.max_batch_size = max_batch if batched else 0
    for tensors, field in ((io.inputs, config.input), (io.outputs, config.output)):
        for t in tensors:
            entry = field.add(name=t.name, data_type=pb.DataType.Value(t.data_type))
            dims = [d if isinstance(d, int) else -1 for d in (t.shape[1:] if batched else t.shape)]
            if not dims:  # Triton needs dims: [1] carried, the model sees [B] (or a scalar)
                entry.dims.append(1)
                entry.reshape.SetInParent()
            else:
                entry.dims.extend(dims)
    if batched:
        config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    group = config.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.Kind.Value(kind))
    group.profile.extend(str(i) for i in range(profiles))
    session = session or {}
    level = _ORT_LEVELS.get(session.get("optimization", "all"))
    if platform is None and level is not None:
        config.optimization.graph.level = level
    for key in ("intra_op_thread_count", "inter_op_thread_count"):
        threads = int(session.get(key.replace("thread_count", "num_threads"), 0))
        if platform is None and threads > 0:
            config.parameters[key].string_value = str(threads)
    return config


def generation_model_config(name: str, *, max_batch: int, instances: int, queue_delay_us: int):
    """Config of the Python-backend model that runs the generation loop (tensors: ``triton_requests``)."""
    pb = model_config_pb2()
    config = pb.ModelConfig(name=name, backend="python", max_batch_size=max_batch)
    for specs, field in ((INPUTS, config.input), (OUTPUTS, config.output)):
        for spec in specs:
            entry = field.add(name=spec.name, data_type=pb.DataType.Value(_triton_type(spec.dtype)), dims=spec.dims)
            if spec.optional:
                entry.optional = True
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    config.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.Kind.Value("KIND_CPU"))
    return config


def render(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def validate_config(text: str, where: str, expected_name: str | None = None):
    """Parse ``config.pbtxt`` text with Triton's schema and apply the checks Triton makes at load time."""
    from google.protobuf import text_format

    pb = model_config_pb2()
    config = pb.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ExportError(f"{where}: not a valid Triton model config ({exc})") from None
    problems = []
    if expected_name is not None and config.name != expected_name:
        problems.append(f"name {config.name!r} differs from its directory {expected_name!r}")
    if not (config.backend or config.platform):
        problems.append("neither backend nor platform is set")
    if config.max_batch_size < 0:
        problems.append("max_batch_size is negative")
    if config.HasField("dynamic_batching") and config.max_batch_size == 0:
        problems.append("dynamic_batching needs max_batch_size > 0")
    if not config.input or not config.output:
        problems.append("a model needs inputs and outputs")
    names = [t.name for t in (*config.input, *config.output)]
    if len(set(names)) != len(names):
        problems.append("an input or output name repeats")
    for tensor in (*config.input, *config.output):
        if tensor.data_type == pb.TYPE_INVALID:
            problems.append(f"{tensor.name}: no data_type")
        if not tensor.dims:
            problems.append(f"{tensor.name}: no dims")
        if any(d < -1 or d == 0 for d in tensor.dims):
            problems.append(f"{tensor.name}: dims {list(tensor.dims)} (each must be -1 or positive)")
    for group in config.instance_group:
        if group.count < 1:
            problems.append(f"instance_group count {group.count}")
        if group.profile and config.platform != "tensorrt_plan":
            problems.append("instance_group profiles are for TensorRT plans only")
    if problems:
        raise ExportError(f"{where}: invalid Triton model config: {'; '.join(problems)}")
    return config


def _triton_type(dtype: str) -> str:
    return "TYPE_STRING" if dtype == "BYTES" else f"TYPE_{dtype}"
