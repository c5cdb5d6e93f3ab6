"""How attention reads the key cache (ONNX decoder graph, in place; values unchanged).

``key_transpose``: the exporter writes ``K^T`` of each layer's attention as
``Reshape(K, [-1, T, D]) -> Transpose([0, 2, 1]) -> Reshape([B, H, D, T])``: a copy of the
whole key cache every step that ONNX Runtime cannot fold. One ``Transpose(K, [0, 1, 3, 2])``
computes the same and ONNX Runtime folds it into the score MatMul (``FusedMatMul`` with
``transB``), so the keys are read where they lie.
"""

from __future__ import annotations

import numpy as np
import onnx

from tpc.onnx_graph import GraphView, attribute, drop_unused


def _shape_slice(view: GraphView, name: str, source: str) -> tuple[int, int] | None:
    """(start, end) when ``name`` is ``Slice(Shape(source), start, end)`` along axis 0, constant bounds."""
    node = view.producer.get(name)
    if node is None or node.op_type != "Slice" or len(node.input) < 3:
        return None
    shape = view.producer.get(node.input[0])
    if shape is None or shape.op_type != "Shape" or shape.input[0] != source:
        return None
    if attribute(shape, "start", 0) != 0 or attribute(shape, "end") is not None:
        return None
    starts, ends = view.constant(node.input[1]), view.constant(node.input[2])
    axes = view.constant(node.input[3]) if len(node.input) > 3 and node.input[3] else np.zeros(1, np.int64)
    steps = view.constant(node.input[4]) if len(node.input) > 4 and node.input[4] else np.ones(1, np.int64)
    if starts is None or ends is None or axes is None or steps is None:
        return None
    if starts.size != 1 or ends.size != 1 or int(axes.reshape(-1)[0]) != 0 or int(steps.reshape(-1)[0]) != 1:
        return None
    return int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])


def _shape_parts(view: GraphView, name: str, source: str) -> list | None:
    """The pieces of a shape ``Concat``: (start, end) slices of ``source``'s shape, or constant lists."""
    node = view.producer.get(name)
    if node is None or node.op_type != "Concat":
        return None
    parts = []
    for piece in node.input:
        value = view.constant(piece)
        if value is not None:
            parts.append(value.reshape(-1).tolist())
            continue
        bounds = _shape_slice(view, piece, source)
        if bounds is None:
            return None
        parts.append(bounds)
    return parts


_BIG = 2**62


def _same_end(end: int) -> bool:
    return end >= _BIG or end == np.iinfo(np.int64).max


def _is_last_two_swapped(parts: list) -> bool:
    """[x[:-2], x[-1:], x[-2:-1]]: the shape of x with its last two dims swapped."""
    if len(parts) != 3 or not all(isinstance(p, tuple) for p in parts):
        return False
    (a0, a1), (b0, b1), (c0, c1) = parts
    return (a0 == 0 or a0 <= -_BIG) and a1 == -2 and b0 == -1 and _same_end(b1) and (c0, c1) == (-2, -1)


def _is_flat_keys(parts: list) -> bool:
    """[-1, x[-2:-1], x[-1:]]: every leading dim flattened, the last two kept."""
    if len(parts) != 3 or parts[0] != [-1] or not all(isinstance(p, tuple) for p in parts[1:]):
        return False
    (b0, b1), (c0, c1) = parts[1:]
    return (b0, b1) == (-2, -1) and c0 == -1 and _same_end(c1)


def key_transpose(view: GraphView) -> int:
    """Reshape -> Transpose([0,2,1]) -> Reshape that swaps the last two dims of a 4-D value: one Transpose."""
    rewritten = 0
    for node in list(view.graph.node):
        if node.op_type != "Transpose" or list(attribute(node, "perm", [])) != [0, 2, 1]:
            continue
        first = view.producer.get(node.input[0])
        second = view.only_reader(node.output[0])
        if first is None or first.op_type != "Reshape" or second is None or second.op_type != "Reshape":
            continue
        source = first.input[0]
        flat = _shape_parts(view, first.input[1], source)
        back = _shape_parts(view, second.input[1], source)
        if flat is None or back is None or not _is_flat_keys(flat) or not _is_last_two_swapped(back):
            continue
        if len(view.shape_of(source) or []) != 4:  # the one Transpose's perm is that of a 4-D value
            continue
        del second.input[:]
        second.input.extend([source])
        second.op_type = "Transpose"
        del second.attribute[:]
        second.attribute.extend([onnx.helper.make_attribute("perm", [0, 1, 3, 2])])
        rewritten += 1
    if rewritten:
        view.refresh()
        drop_unused(view)
    return rewritten
