"""Rotary position embedding as ``com.microsoft.RotaryEmbedding`` (ONNX decoder graph, in place).

The exporter writes Llama/Qwen2's rotary embedding of q and k as ``x * cos + rotate_half(x) * sin``:
two Slices, a Neg, a Concat, two Muls and an Add per tensor per layer, on a cos/sin computed from
``position_ids`` in the graph. ``RotaryEmbedding`` does the same in one op from cos/sin caches of
``max_positions`` rows indexed by the graph's own ``position_ids`` (explicit positions: a pruned
prompt's positions keep their gaps). Matched only where the cos/sin come straight from
``Cos/Sin(Concat(f, f))`` with ``f = Cast(Unsqueeze(position_ids, 2)) * inv_freq`` and 2-D position
ids (no attention scaling; an M-RoPE decoder's 3-D positions are left alone). The caches hold
``max_positions`` rows; the graph records that number as ``tpc.max_positions`` in its metadata,
which the runtime checks (a later position is a usage error, not an ONNX Runtime one).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from tpc.onnx_graph import GraphView, attribute, drop_unused

MAX_POSITIONS_KEY = "tpc.max_positions"


def _operands(node: onnx.NodeProto, op: str) -> list[tuple[str, str]]:
    """(a, b) and (b, a) of a two-input ``op`` node (both orders: Mul and Add commute)."""
    if node is None or node.op_type != op or len(node.input) != 2:
        return []
    a, b = node.input
    return [(a, b), (b, a)]


def _frequencies(view: GraphView, name: str, op: str) -> tuple[np.ndarray, str] | None:
    """(inv_freq, position_ids) when ``name`` is ``Unsqueeze(op(Concat(f, f)), 1)`` of the rotary form."""
    unsqueeze = view.producer.get(name)
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or len(unsqueeze.input) < 2:
        return None
    axes = view.constant(unsqueeze.input[1])
    trig = view.producer.get(unsqueeze.input[0])
    if axes is None or axes.reshape(-1).tolist() != [1] or trig is None or trig.op_type != op:
        return None
    concat = view.producer.get(trig.input[0])
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 2 or concat.input[0] != concat.input[1]:
        return None
    if attribute(concat, "axis") not in (-1, 2):
        return None
    for cast_name, freq_name in _operands(view.producer.get(concat.input[0]), "Mul"):
        inv_freq = view.constant(freq_name)
        cast = view.producer.get(cast_name)
        if inv_freq is None or inv_freq.ndim != 1 or cast is None or cast.op_type != "Cast":
            continue
        if attribute(cast, "to") != onnx.TensorProto.FLOAT:
            continue
        positions = view.producer.get(cast.input[0])
        if positions is None or positions.op_type != "Unsqueeze" or len(positions.input) < 2:
            continue
        p_axes = view.constant(positions.input[1])
        source = positions.input[0]
        if p_axes is None or p_axes.reshape(-1).tolist() not in ([2], [-1]):
            continue
        if source not in {i.name for i in view.graph.input} or len(view.shape_of(source) or []) != 2:
            continue
        return inv_freq.astype(np.float32), source
    return None


def _half_slices(view: GraphView, name: str, x: str, half: int) -> str | None:
    """'low' / 'high' when ``name`` is ``Slice(x)`` over the last axis of its first / second half."""
    node = view.producer.get(name)
    if node is None or node.op_type != "Slice" or node.input[0] != x or len(node.input) < 4:
        return None
    starts, ends, axes = (view.constant(node.input[i]) for i in (1, 2, 3))
    steps = view.constant(node.input[4]) if len(node.input) > 4 and node.input[4] else np.ones(1, np.int64)
    if any(v is None or v.size != 1 for v in (starts, ends, axes, steps)) or int(steps.reshape(-1)[0]) != 1:
        return None
    if int(axes.reshape(-1)[0]) not in (-1, 3):
        return None
    bounds = (int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0]))
    if bounds == (0, half):
        return "low"
    if bounds[0] == half and bounds[1] >= 2 * half:
        return "high"
    return None


def _rotary_of(view: GraphView, add: onnx.NodeProto):
    """(x, inv_freq, position_ids) when ``add`` is ``x * cos + rotate_half(x) * sin``; else None."""
    for cos_term, sin_term in _operands(add, "Add"):
        for x, cos_u in _operands(view.producer.get(cos_term), "Mul"):
            cos = _frequencies(view, cos_u, "Cos")
            if cos is None:
                continue
            inv_freq, positions = cos
            half = inv_freq.shape[0]
            if (view.shape_of(x) or [None])[-1] not in (2 * half, None) or len(view.shape_of(x) or [0] * 4) != 4:
                continue
            for rotated, sin_u in _operands(view.producer.get(sin_term), "Mul"):
                sin = _frequencies(view, sin_u, "Sin")
                concat = view.producer.get(rotated)
                if sin is None or sin[1] != positions or not np.array_equal(sin[0], inv_freq):
                    continue
                if concat is None or concat.op_type != "Concat" or len(concat.input) != 2:
                    continue
                if attribute(concat, "axis") not in (-1, 3):
                    continue
                neg = view.producer.get(concat.input[0])
                if neg is None or neg.op_type != "Neg":
                    continue
                if (
                    _half_slices(view, neg.input[0], x, half) == "high"
                    and _half_slices(view, concat.input[1], x, half) == "low"
                ):
                    return x, inv_freq, positions
    return None


def rotary_embedding(view: GraphView, max_positions: int) -> int:
    """Replace each matched rotary embedding with ``RotaryEmbedding`` on shared cos/sin caches."""
    caches: dict[bytes, tuple[str, str]] = {}
    fused = 0
    for node in list(view.graph.node):
        found = _rotary_of(view, node) if node.op_type == "Add" else None
        if found is None:
            continue
        x, inv_freq, positions = found
        key = inv_freq.tobytes()
        if key not in caches:
            angles = np.arange(max_positions, dtype=np.float32)[:, None] * inv_freq[None, :]
            cos, sin = view.unique("rotary_cos_cache"), view.unique("rotary_sin_cache")
            view.graph.initializer.append(numpy_helper.from_array(np.cos(angles).astype(np.float32), cos))
            view.graph.initializer.append(numpy_helper.from_array(np.sin(angles).astype(np.float32), sin))
            caches[key] = (cos, sin)
        cos, sin = caches[key]
        rotary = onnx.helper.make_node(
            "RotaryEmbedding",
            [x, positions, cos, sin],
            list(node.output),
            name=view.unique(f"{node.name or node.output[0]}_rotary"),
            domain="com.microsoft",
            interleaved=0,
        )
        node.CopyFrom(rotary)
        fused += 1
    if fused:
        view.refresh()
        drop_unused(view)
    return fused
