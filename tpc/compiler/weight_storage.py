"""``--store-weights fp16``: fp32 graphs whose large weights are stored in half precision on disk.

Every fp32 initializer of ``MIN_BYTES`` or more (the matrices and tables) of a graph that is not
quantized becomes an fp16 initializer followed by ``Cast(to=float)`` placed just before its
first consumer; the graph computes in fp32 as before, on weights rounded to fp16, and its
external data file halves. Applied after ONNX Runtime's offline optimisation, whose constant
folding would turn the Cast back into an fp32 initializer; ONNX Runtime folds it when a
session is created instead, so the weights occupy fp32 memory once loaded (only the bytes on
disk and the bytes read at load shrink). An initializer whose values do not fit fp16 (beyond
+-65504) stays fp32 and is counted. Quantized graphs (MatMulNBits: their packed weights and
scales) are left as they are.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from tpc.onnx_graph import unique_name

MIN_BYTES = 1024  # smaller fp32 initializers (biases, norms' scales, shapes) stay as they are
FP16_MAX = float(np.finfo(np.float16).max)
SUFFIX = "__fp16"


def graphs_kept_fp32(quantized, grid_graphs) -> dict[str, str]:
    """The graphs whose weights stay as they are, each with why: quantized graphs, and the vision graphs of
    two or more compiled grids, which read one shared weights file (``tpc.runtimes.shared_weights``) that
    every session maps once; ONNX Runtime folds a Cast into a private fp32 initializer per session, so
    fp16-stored weights there would occupy memory once per grid instead of once."""
    kept = {name: "quantized (MatMulNBits)" for name in quantized}
    if len(grid_graphs) >= 2:
        why = f"one weights file shared by {len(grid_graphs)} grid graphs (fp16 + Cast: one fp32 copy per graph)"
        kept.update({name: why for name in grid_graphs})
    return kept


def store_fp16(paths: dict[str, Path], skip=frozenset()) -> dict[str, dict[str, Any]]:
    """Rewrite every graph of ``paths`` not in ``skip`` in place (same file names); per graph, what was stored."""
    stale: set[Path] = set()
    stats = {name: store_graph_fp16(path, stale=stale) for name, path in paths.items() if name not in skip}
    written = {path.with_name(path.name + ".data") for name, path in paths.items() if name not in skip}
    for old in stale - written:  # only once every graph is rewritten: grid graphs may share one file
        old.unlink(missing_ok=True)
    return stats


def store_graph_fp16(path: Path, min_bytes: int = MIN_BYTES, stale: set[Path] | None = None) -> dict[str, Any]:
    """Store ``path``'s large fp32 initializers as fp16 + Cast; returns the manifest's record of it.

    The data files the old graph read are added to ``stale`` (left for the caller to remove), else removed."""
    path = Path(path)
    bytes_before = graph_bytes(path)
    model = onnx.load(str(path))  # with its external data, in memory
    graph = model.graph
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    stored, too_large, fp32_bytes = [], [], 0
    keep = []
    for tensor in graph.initializer:
        if tensor.data_type != onnx.TensorProto.FLOAT or 4 * int(np.prod(tensor.dims)) < min_bytes:
            keep.append(tensor)
            continue
        values = numpy_helper.to_array(tensor)
        if values.size and float(np.abs(values).max()) > FP16_MAX:  # inf/nan in fp16: keep fp32
            too_large.append(tensor.name)
            keep.append(tensor)
            continue
        half_name = unique_name(tensor.name + SUFFIX, taken)
        keep.append(numpy_helper.from_array(values.astype(np.float16), half_name))
        stored.append((tensor.name, half_name))
        fp32_bytes += values.nbytes
    del graph.initializer[:]
    graph.initializer.extend(keep)
    names = {name for name, _ in stored}
    kept_inputs = [i for i in graph.input if i.name not in names]  # an initializer listed as an input (old IRs)
    del graph.input[:]
    graph.input.extend(kept_inputs)
    _insert_casts(graph, dict(stored))
    old_files = _save(model, path)
    if stale is None:
        for old in old_files - {path.with_name(path.name + ".data")}:
            old.unlink(missing_ok=True)
    else:
        stale |= old_files
    return {
        "initializers": len(stored),
        "fp32_bytes": fp32_bytes,
        "stored_bytes": fp32_bytes // 2,
        "kept_fp32_out_of_range": too_large,
        "file_bytes_before": bytes_before,
        "file_bytes_after": graph_bytes(path),
    }


def graph_bytes(path: Path) -> int:
    """The .onnx file and every external data file it references."""
    return path.stat().st_size + sum(f.stat().st_size for f in _data_files(path))


def _data_files(path: Path) -> set[Path]:
    model = onnx.load(str(path), load_external_data=False)
    return {
        path.parent / entry.value
        for tensor in external_data_helper._get_all_tensors(model)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }


def _insert_casts(graph: onnx.GraphProto, halves: dict[str, str]) -> None:
    """A Cast to fp32 of each stored initializer, just before the first node that reads it (so that a graph cut
    into pieces by layers finds each Cast next to its consumer). A weight read only inside a subgraph (If/Loop
    body) gets its Cast at the end of the top-level nodes it precedes: before the node holding the subgraph."""
    pending = dict(halves)
    nodes = []
    for node in graph.node:
        for name in _reads(node):
            if name in pending:
                half = pending.pop(name)
                nodes.append(
                    onnx.helper.make_node("Cast", [half], [name], name=f"{half}_cast", to=onnx.TensorProto.FLOAT)
                )
        nodes.append(node)
    for name, half in pending.items():  # read by nothing (a graph output, or unused): keep the name defined
        nodes.insert(0, onnx.helper.make_node("Cast", [half], [name], name=f"{half}_cast", to=onnx.TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)


def _reads(node: onnx.NodeProto):
    yield from node.input
    for attribute in node.attribute:
        for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
            for inner in sub.node:
                yield from _reads(inner)


def _save(model: onnx.ModelProto, path: Path) -> set[Path]:
    """Write ``path`` and ``path.data`` afresh in a temporary folder, then move them over the old ones; returns
    the data files the old graph read (``path.data`` is replaced, the others are left)."""
    data = path.with_name(path.name + ".data")
    old = _data_files(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".store-weights-") as tmp:
        fresh = Path(tmp) / path.name
        external_data_helper.convert_model_to_external_data(
            model, all_tensors_to_one_file=True, location=data.name, size_threshold=MIN_BYTES
        )
        onnx.save_model(model, str(fresh))
        data.unlink(missing_ok=True)
        written = Path(tmp) / data.name
        if written.exists():
            written.chmod(fresh.stat().st_mode & 0o777)
            os.replace(written, data)
        os.replace(fresh, path)
    return old
