"""Vision graphs of grid families (Qwen2.5-VL): one static graph per compiled image grid.

Dynamic resolution meets static engines: the user compiles a set of grids (``--image-sizes`` in
pixels, or ``--min-pixels/--max-pixels`` and the default set of ``tpc.models.qwen_geometry.default_grids``).
Each grid gets its own graph ``vision_<h>x<w>``, traced from the adapter's boundary at that grid, with
the grid's tables (rotary angles, window gather/scatter) as constants and the method's selection at
that grid's budget (``keep = ceil(M * (1 - R))`` of its ``M`` merged tokens). The graphs' weights are
the same tensors: ``share_weights`` writes each once into ``vision.weights`` and points every graph
at it, so no weight is stored twice.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
import torch

from tpc.artifact_layout import GRID_VISION_INPUT, SHARED_VISION_WEIGHTS, VISION, grid_vision_name
from tpc.compiler.onnx_export import export_onnx
from tpc.compiler.trace import batch_dim, trace_vision
from tpc.errors import UsageError
from tpc.passes import DEFAULT_PASSES, PassContext, run_passes

# When neither --image-sizes nor --max-pixels is given for a checkpoint (not a preset): the processor's
# bounds, the upper one capped at Qwen's documented deployment setting 1280 * 28 * 28 (about 1 MP)
DEFAULT_MAX_PIXELS = 1280 * 28 * 28
_ALIGN = 4096


def resolve_grids(settings, adapter, default_sizes=()) -> list[tuple[int, int]]:
    """The grids to compile, from the settings, else the preset's sizes, else the default set."""
    from tpc.models.qwen_geometry import default_grids, grids_for_sizes

    low = settings.min_pixels or adapter.min_pixels
    high = settings.max_pixels or adapter.max_pixels
    if low > high:
        raise UsageError(f"--min-pixels {low} is larger than --max-pixels {high}")
    geometry = dict(patch_size=adapter.patch_size, merge=adapter.merge, min_pixels=low, max_pixels=high)
    try:
        if settings.image_sizes:
            return grids_for_sizes(settings.image_sizes, **geometry)
        if settings.max_pixels or settings.min_pixels:
            return default_grids(low, high, patch_size=adapter.patch_size, merge=adapter.merge)
        if default_sizes:
            return grids_for_sizes(list(default_sizes), **geometry)
        high = min(high, DEFAULT_MAX_PIXELS)
        return default_grids(low, high, patch_size=adapter.patch_size, merge=adapter.merge)
    except ValueError as exc:
        raise UsageError(f"image sizes: {exc}") from None


def prepare(settings, adapter, method, reduced: bool, default_sizes=()) -> None:
    """Refuse what grid families do not support yet (before any tracing) and fix the compiled grids.

    Reduced precision (``reduced``: fp16/bf16 weights, ``--quantize`` of the decoder) is supported: the
    agreement check runs per compiled grid (``verify_precision.grid_vision_references``)."""
    refused = [
        (settings.buckets, "--buckets"),
        (settings.select_layer is not None, "--select-layer"),
    ]
    for given, flag in refused:
        if given:
            raise UsageError(f"{adapter.title}: {flag} is not supported for this family yet")
    if method.name not in adapter.supported_methods:
        raise UsageError(
            f"method {method.name} is not available for {adapter.title} (pruning after the 2x2 merger); "
            f"methods that apply: {', '.join(adapter.supported_methods)}"
        )
    grids = resolve_grids(settings, adapter, default_sizes)
    adapter.set_grids(sorted(set(grids), key=lambda g: (g[0] * g[1], g)))
    adapter.set_budget(settings.ratio, settings.keep)


def export_grid_vision(adapter, method, params: dict, settings, out: Path, dtype) -> tuple[dict, dict, list]:
    """Trace, run the passes on and export one vision graph per grid; returns (paths, info, pass logs)."""
    paths, keeps, tokens, logs = {}, {}, {}, []
    for grid in adapter.grids:
        name = grid_vision_name(grid)
        view = adapter.for_grid(grid)
        keep = adapter.keep_of(grid, settings.ratio, settings.keep)
        validate = method.extra.get("validate_keep")
        if validate is not None:
            validate(view.vision.num_patches, keep, params)
        sample = torch.zeros(2, grid[0] * grid[1], adapter.patch_values, dtype=dtype)
        gm = trace_vision(adapter.vision_boundary(grid), 0, dtype, sample=sample, input_name=GRID_VISION_INPUT)
        ctx = PassContext(layout=view.vision, method=method, keep=keep, params=params)
        dump = None if settings.dump_graphs is None else Path(settings.dump_graphs) / name
        gm, log = run_passes(gm, ctx, DEFAULT_PASSES, dump_dir=dump)
        paths[name] = export_onnx(
            gm,
            (sample,),
            out / f"{name}.onnx",
            input_names=[GRID_VISION_INPUT],
            output_names=["image_features", "kept_indices"],
            dynamic_shapes={GRID_VISION_INPUT: {0: batch_dim()}},
            axis_names={GRID_VISION_INPUT: {0: "batch"}},
        )
        del gm
        keeps[name], tokens[name] = keep, view.vision.num_patches
        logs.append({"grid": list(grid), "passes": log})
    stats = share_weights(list(paths.values()), out / SHARED_VISION_WEIGHTS)
    info = {
        "grids": {grid_vision_name(g): list(g) for g in adapter.grids},
        "keep": keeps,
        "tokens": tokens,
        "weights": dict(stats, file=SHARED_VISION_WEIGHTS),
    }
    return paths, info, logs


def share_weights(paths: list[Path], target: Path) -> dict:
    """Point every graph's external tensors at one file holding each distinct tensor once.

    Tensors are matched by content (the graphs come from the same checkpoint, so a weight is
    byte-identical in each). Large tensors start on a 4 KiB boundary (memory-mappable).
    """
    offsets: dict[bytes, tuple[int, int]] = {}
    written = referenced = 0
    staging = target.with_name(target.name + ".tmp")
    stale = set()
    with open(staging, "wb") as sink:
        for path in paths:
            model = onnx.load(str(path), load_external_data=False)
            sources = set()
            for tensor in _external_tensors(model.graph):
                info = {entry.key: entry.value for entry in tensor.external_data}
                source = path.parent / info["location"]
                sources.add(source)
                with open(source, "rb") as handle:
                    handle.seek(int(info.get("offset", 0)))
                    data = handle.read(int(info["length"]))
                referenced += len(data)
                key = hashlib.sha256(data).digest()
                if key not in offsets:
                    pad = (-sink.tell()) % (_ALIGN if len(data) >= _ALIGN else 64)
                    sink.write(b"\0" * pad)
                    offsets[key] = (sink.tell(), len(data))
                    sink.write(data)
                    written += len(data)
                offset, length = offsets[key]
                del tensor.external_data[:]
                for k, v in (("location", target.name), ("offset", str(offset)), ("length", str(length))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = k, v
            onnx.save(model, str(path))
            stale |= sources
    staging.replace(target)
    for source in stale - {target}:
        source.unlink(missing_ok=True)
    return {"bytes": written, "bytes_referenced": referenced, "graphs": len(paths)}


def share_grid_weights(paths: dict[str, Path], out: Path) -> dict:
    """``share_weights`` over an artifact's grid vision graphs (after a step that rewrote their weights)."""
    vision = [path for name, path in paths.items() if name.startswith(f"{VISION}_") and name[7:8].isdigit()]
    return dict(share_weights(vision, out / SHARED_VISION_WEIGHTS), file=SHARED_VISION_WEIGHTS)


def _external_tensors(graph):
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_location == onnx.TensorProto.EXTERNAL:
                yield attribute.t
            for sub in list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else []):
                yield from _external_tensors(sub)
