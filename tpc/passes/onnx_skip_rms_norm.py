"""Residual Add + RMSNorm as one ``com.microsoft.SkipSimplifiedLayerNormalization`` (ONNX decoder graph).

Every RMSNorm of a Llama/Qwen2 decoder but the first normalizes a residual sum ``h = a + b``, and ``h``
is the next residual too. ONNX Runtime's CPU kernel computes ``h`` and its norm in one pass over the
row (outputs 0: the norm, 3: the sum), where the exported graph runs an Add, a Pow, a ReduceMean, an
Add, a Sqrt, a Reciprocal and two Muls, each a pass over the activations. ONNX Runtime's optimizer
does not fuse this form itself. Matched: ``Mul(w, Mul(h, Reciprocal(Sqrt(ReduceMean(Pow(h, 2), [-1])
+ eps))))`` with ``h = Add(a, b)`` of two activations of one recorded shape and ``w`` a 1-D constant.
The kernel's float arithmetic differs from the graph's by rounding: quantized decoders only.
"""

from __future__ import annotations

import numpy as np
import onnx

from tpc.onnx_graph import GraphView, attribute, drop_unused

_NORM = ("Mul", "Reciprocal", "Sqrt", "Add", "ReduceMean", "Pow")


def _norm_of(view: GraphView, scaled: onnx.NodeProto) -> tuple[str, str, float] | None:
    """(h, w, eps) when ``scaled`` is ``Mul(w, Mul(h, Reciprocal(Sqrt(Add(ReduceMean(Pow(h, 2)), eps)))))``."""
    if scaled.op_type != "Mul":
        return None
    for side in (0, 1):
        weight = view.constant(scaled.input[side])
        inner = view.producer.get(scaled.input[1 - side])
        if weight is None or weight.ndim != 1 or inner is None or inner.op_type != "Mul":
            continue
        for x_side in (0, 1):
            h = inner.input[x_side]
            nodes = view.producer_chain(inner.input[1 - x_side], _NORM[1:])
            if nodes is None:
                continue
            reciprocal, _, add_eps, mean, power = nodes
            eps = view.constant(add_eps.input[1])
            exponent = view.constant(power.input[1])
            axes = view.constant(mean.input[1]) if len(mean.input) > 1 else attribute(mean, "axes")
            if power.input[0] != h or eps is None or exponent is None or float(exponent.reshape(-1)[0]) != 2.0:
                continue
            if axes is None or np.asarray(axes).reshape(-1).tolist() != [-1] or attribute(mean, "keepdims", 1) != 1:
                continue
            if weight.shape[0] != (view.shape_of(h) or [None])[-1]:
                continue
            readers = [view.only_reader(n.output[0]) for n in (inner, reciprocal, *nodes[1:])]
            if None in readers:
                continue
            return h, scaled.input[side], float(eps.reshape(-1)[0])
    return None


def skip_rms_norm(view: GraphView) -> int:
    """Fuse each residual Add and the RMSNorm of its sum; returns how many were fused."""
    fused = 0
    for node in list(view.graph.node):
        found = _norm_of(view, node)
        if found is None:
            continue
        h, weight, eps = found
        add = view.producer.get(h)
        if add is None or add.op_type != "Add" or len(add.input) != 2:
            continue
        a, b = add.input
        shape = view.shape_of(h)
        if shape is None or len(shape) != 3 or view.shape_of(a) != shape or view.shape_of(b) != shape:
            continue
        if view.constant(a) is not None or view.constant(b) is not None:
            continue
        fusedop = onnx.helper.make_node(
            "SkipSimplifiedLayerNormalization",
            [a, b, weight],
            [node.output[0], "", "", h],
            name=view.unique(f"{node.name or node.output[0]}_skip_norm"),
            domain="com.microsoft",
            epsilon=eps,
        )
        add.CopyFrom(fusedop)  # in the Add's place: a and b are defined before it, every reader comes after
        del node.output[:]
        node.output.extend([view.unique(f"{fusedop.output[0]}_unused")])
        view.refresh()
        fused += 1
    if fused:
        drop_unused(view)
    return fused
