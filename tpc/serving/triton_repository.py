"""``tpc export-triton``: an artifact as a Triton Inference Server model repository.

Layout (``NAME``: the compiled model's id unless ``--name`` says otherwise)::

    REPOSITORY/
      NAME/                    Python backend: the generation loop (text + image in, text + ids out)
        config.pbtxt
        1/model.py             tpc/serving/triton_python_model.py, BLS calls to the graph models
        1/tpc_model.json       graph -> model name, input types, outputs in order
        1/artifact/            manifest.json, processor/ and the runtime files (anyres newline)
      NAME_vision/             onnxruntime backend, or tensorrt_plan when the engines are built
        config.pbtxt
        1/vision.ort.onnx      the graph, under its artifact name, with its external data
      NAME_embed/ ...          one model per graph of the artifact (decoder segments, selectors, ...)

Graph, engine and processor files are **hard links** to the artifact's own files when both
directories are on one filesystem (no second copy on disk) and copies otherwise; neither tpc
nor Triton writes to them in place, so the repository stays a snapshot even when the artifact
is recompiled with ``--force`` (that writes new files). The repository is written to a hidden
temporary directory next to ``-o`` and renamed into place only once every ``config.pbtxt``
passed ``validate_repository``: a failed export leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tpc.artifact_layout import PROCESSOR_DIR
from tpc.errors import ArtifactError, ExportError, UsageError
from tpc.manifest import MANIFEST_NAME, Artifact, load_artifact
from tpc.serving.triton_config import (
    KINDS,
    NUMPY_NAMES,
    GraphIO,
    generation_model_config,
    graph_model_config,
    read_graph_io,
    render,
    validate_config,
)
from tpc.serving.triton_requests import default_model_name

CONFIG = "config.pbtxt"
VERSION = "1"
METADATA = "tpc_model.json"
ARTIFACT_DIR = "artifact"
_DEFAULT_FILES = {"onnxruntime": "model.onnx", "tensorrt_plan": "model.plan", "python": "model.py"}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class ExportSummary:
    path: Path
    name: str
    models: list[tuple[str, str, int]] = field(default_factory=list)  # (model, backend or platform, max batch)
    linked: int = 0  # files hard-linked from the artifact
    copied: int = 0  # files copied (another filesystem)


@dataclass(frozen=True)
class _Engine:
    path: Path
    profiles: int
    max_batch: int  # largest batch every profile takes (0: the engine has no batch axis from 1)


def export_repository(
    artifact_path: str | Path,
    output: str | Path,
    *,
    name: str | None = None,
    instances: int = 1,
    max_batch: int = 8,
    device: str = "auto",
    runtime: str = "auto",
    queue_delay_us: int = 500,
    force: bool = False,
) -> ExportSummary:
    """Write ``artifact_path`` as a Triton model repository at ``output``.

    ``device``: instance kind of the onnxruntime models (auto, cpu, gpu); ``runtime``: ``auto``
    exports TensorRT engines when the artifact has built ones, ONNX graphs otherwise; ``ort``
    always the ONNX graphs; ``trt`` requires the engines.
    """
    if instances < 1 or max_batch < 1:
        raise UsageError(f"--instances and --max-batch must be at least 1 (got {instances} and {max_batch})")
    if device not in KINDS:
        raise UsageError(f"unknown device {device!r}; choose one of: {', '.join(KINDS)}")
    if runtime not in ("auto", "ort", "trt"):
        raise UsageError(f"unknown runtime {runtime!r}; choose auto, ort or trt")
    artifact = load_artifact(artifact_path)
    output = Path(output)
    _check_output(output, artifact.root, force)
    name = name or default_model_name(artifact.manifest)
    if not _NAME.match(name):
        raise UsageError(f"model name {name!r}: use letters, digits, '_', '.' and '-' only")
    engines = _engines(artifact, runtime, device)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    try:
        summary = _write(staging, artifact, name, engines, instances, max_batch, device, queue_delay_us)
        validate_repository(staging)
        _move_into_place(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary.path = output
    return summary


def validate_repository(root: str | Path) -> dict:
    """Every model directory's ``config.pbtxt`` parsed and checked, and its model file present."""
    root = Path(root)
    configs = {}
    for directory in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        config_path = directory / CONFIG
        if not config_path.is_file():
            raise ExportError(f"{directory}: a model directory without {CONFIG}")
        config = validate_config(config_path.read_text(), str(config_path), expected_name=directory.name)
        kind = config.platform or config.backend
        model_file = config.default_model_filename or _DEFAULT_FILES.get(kind, "")
        versions = [p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()]
        if not versions:
            raise ExportError(f"{directory}: no numbered version directory")
        for version in versions:
            if model_file and not (version / model_file).is_file():
                raise ExportError(f"{version}: {model_file} is missing ({kind} model)")
        configs[directory.name] = config
    if not configs:
        raise ExportError(f"{root}: no models")
    return configs


def _check_output(output: Path, artifact_root: Path, force: bool) -> None:
    resolved, root = output.resolve(), artifact_root.resolve()
    if resolved == root or root in resolved.parents or resolved in root.parents:
        raise UsageError(f"{output}: the repository must not contain, or be inside, the artifact {artifact_root}")
    if output.exists() or output.is_symlink():
        if not output.is_dir() or output.is_symlink():
            raise UsageError(f"{output}: exists and is not a directory")
        if any(output.iterdir()) and not force:
            raise UsageError(f"{output}: exists and is not empty; pass --force to replace it")


def _engines(artifact: Artifact, runtime: str, device: str) -> dict[str, _Engine] | None:
    built = artifact.target == "trt" and bool(artifact.manifest.get("engines"))
    if runtime == "trt" and not built:
        raise ArtifactError(
            f"{artifact.root}: no built TensorRT engines (run `tpc build` on the target GPU); "
            "export the ONNX graphs with --runtime ort"
        )
    if runtime == "ort" or not built:
        return None
    if device == "cpu":
        raise UsageError("TensorRT engines run on a GPU: --device cpu needs --runtime ort (the ONNX graphs)")
    engines = {}
    for graph, spec in artifact.manifest["trt_plan"]["engines"].items():
        profiles = spec["profiles"]
        firsts = [(shape["min"][0], shape["max"][0]) for p in profiles for shape in p["shapes"].values()]
        batchable = bool(firsts) and all(low <= 1 for low, _ in firsts)
        engines[graph] = _Engine(artifact.root / spec["engine"], len(profiles), min(h for _, h in firsts) * batchable)
    return engines


def _write(staging, artifact, name, engines, instances, max_batch, device, queue_delay_us) -> ExportSummary:
    summary = ExportSummary(staging, name)
    crops = int(artifact.runtime.get("image_layout", {}).get("crops_max", 1))
    if engines is not None:  # the engines' profiles were planned for this many prompts at once
        max_batch = min(max_batch, int(artifact.manifest["trt_plan"].get("limits", {}).get("max_batch", max_batch)))
    graphs = {}
    for graph in artifact.manifest["graphs"]:
        model = f"{name}_{graph}"
        version = staging / model / VERSION
        source = artifact.graph_path(graph)
        io = read_graph_io(source)
        common = dict(instances=instances, queue_delay_us=queue_delay_us)
        if engines is not None:
            engine = engines[graph]
            model_file = f"{graph}.plan"
            _place(engine.path, version / model_file, summary)
            config = graph_model_config(
                model,
                io,
                model_file,
                platform="tensorrt_plan",
                max_batch=min(max_batch * crops, engine.max_batch),
                kind="KIND_GPU",
                profiles=engine.profiles,
                **common,
            )
        else:
            for file in (source, *(source.parent / rel for rel in external_data_files(source))):
                _place(file, version / file.relative_to(source.parent), summary)
            config = graph_model_config(
                model,
                io,
                source.name,
                platform=None,
                max_batch=max_batch * crops,
                kind=KINDS[device],
                session=artifact.manifest.get("session"),
                **common,
            )
        (staging / model / CONFIG).write_text(render(config))
        summary.models.append((model, config.platform or config.backend, config.max_batch_size))
        graphs[graph] = _graph_entry(model, io, config)
    version = staging / name / VERSION
    version.mkdir(parents=True)
    shutil.copyfile(Path(__file__).with_name("triton_python_model.py"), version / "model.py")
    carried = version / ARTIFACT_DIR
    carried.mkdir()
    shutil.copyfile(artifact.root / MANIFEST_NAME, carried / MANIFEST_NAME)
    for rel in _runtime_files(artifact):
        _place(artifact.root / rel, carried / rel, summary)
    metadata = {"artifact": ARTIFACT_DIR, "graphs": graphs}
    (version / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
    config = generation_model_config(name, max_batch=max_batch, instances=instances, queue_delay_us=queue_delay_us)
    (staging / name / CONFIG).write_text(render(config))
    summary.models.insert(0, (name, config.backend, config.max_batch_size))
    return summary


def _graph_entry(model: str, io: GraphIO, config) -> dict:
    """What the Python model needs to call a graph model: its name, input types, output order, reshapes."""
    return {
        "model": model,
        "inputs": {t.name: NUMPY_NAMES[t.data_type] for t in io.inputs},
        "outputs": [t.name for t in io.outputs],
        # tensors declared dims [1] + reshape []: sent and received with one trailing axis of 1
        "row_tensors": [t.name for t in (*config.input, *config.output) if t.HasField("reshape")],
    }


def _runtime_files(artifact: Artifact) -> list[str]:
    """Files the generation loop reads: the processor and the runtime's own (anyres newline)."""
    files = [rel for rel in artifact.manifest["files"] if rel.startswith(PROCESSOR_DIR + "/")]
    files += [rel for rel in artifact.runtime.get("files", {}).values() if rel not in files]
    return files


def external_data_files(path: Path) -> list[str]:
    """Relative paths of the external-data files an ONNX graph refers to (its weights)."""
    import onnx

    locations: list[str] = []

    def visit(graph) -> None:
        tensors = list(graph.initializer)
        for node in graph.node:
            for attribute in node.attribute:
                tensors.extend([attribute.t] if attribute.HasField("t") else attribute.tensors)
                for sub in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                    visit(sub)
        for tensor in tensors:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                location = next(e.value for e in tensor.external_data if e.key == "location")
                if location not in locations:
                    locations.append(location)

    visit(onnx.load(str(path), load_external_data=False).graph)
    return locations


def _place(source: Path, target: Path, summary: ExportSummary) -> None:
    if not source.is_file():
        raise ArtifactError(f"{source}: missing from the artifact")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        summary.linked += 1
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(source, target)
        summary.copied += 1


def _move_into_place(staging: Path, output: Path) -> None:
    if not output.exists():
        staging.rename(output)
        return
    old = output.with_name(f".{output.name}.{os.getpid()}.old")
    output.rename(old)
    try:
        staging.rename(output)
    except OSError:
        old.rename(output)
        raise
    shutil.rmtree(old, ignore_errors=True)
