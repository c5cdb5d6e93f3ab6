"""RMSNorm in the form ONNX Runtime fuses (ONNX decoder graph, in place).

The exporter writes Llama/Qwen2's RMSNorm as ``x * Reciprocal(Sqrt(ReduceMean(Pow(x, 2)) + eps)) * w``.
ONNX Runtime's ``SimplifiedLayerNormFusion`` looks for ``x / Sqrt(...)`` instead, and once the norm is one
``SimplifiedLayerNormalization`` its ``SkipSimplifiedLayerNormalization`` fusion takes the residual Add
before it too. The rewrite ``x * (1 / s) -> x / s`` changes the result by rounding only (one division
instead of a reciprocal and a product), which is why the compiler runs it on quantized decoders only.
"""

from __future__ import annotations

from tpc.onnx_graph import GraphView, drop_unused


def rms_norm_as_division(view: GraphView) -> int:
    """``Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Pow(x, 2)), eps))))`` -> ``Div(x, Sqrt(...))``."""
    rewritten = 0
    for node in list(view.graph.node):
        if node.op_type != "Mul":
            continue
        for side in (0, 1):
            chain = view.producer_chain(node.input[1 - side], ("Reciprocal", "Sqrt", "Add", "ReduceMean", "Pow"))
            if chain is None:
                continue
            reciprocal, sqrt, _, _, power = chain
            exponent = view.constant(power.input[1])
            if power.input[0] != node.input[side] or exponent is None or float(exponent.reshape(-1)[0]) != 2.0:
                continue
            if view.only_reader(reciprocal.output[0]) is not node:
                continue
            x = node.input[side]
            del node.input[:]
            node.input.extend([x, sqrt.output[0]])
            node.op_type = "Div"
            rewritten += 1
            break
    if rewritten:
        view.refresh()
        drop_unused(view)  # the Reciprocals
    return rewritten
