"""One MatMul for the projections that read the same input (ONNX decoder graph, in place).

Attention's q, k and v projections (and the MLP's gate and up) are MatMuls of one activation by
three (two) constant weights. One MatMul by the weights side by side, then a ``Split`` back into the
three outputs, computes the same columns: after quantization that is one ``MatMulNBits`` that reads
(and, at accuracy level 4, quantizes to int8) the activation once instead of three times; biases
(Qwen2's q/k/v) stay the ``Add`` nodes after the split. Block-wise weight quantization runs along K
per output column, so the merged weight quantizes to the very same blocks.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from tpc.onnx_graph import GraphView, drop_unused


def merge_projections(view: GraphView) -> int:
    """Merge every group of two or more MatMuls with one input A and 2-D constant weights of one K and dtype."""
    groups: dict[tuple, list[onnx.NodeProto]] = {}
    for node in view.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in view.initializers:
            continue
        weight = view.initializers[node.input[1]]
        if len(weight.dims) != 2 or node.output[0] in view.outputs:
            continue
        groups.setdefault((node.input[0], weight.dims[0], weight.data_type), []).append(node)
    groups = {key: nodes for key, nodes in groups.items() if len(nodes) >= 2}
    if not groups:
        return 0
    replaced: dict[int, list[onnx.NodeProto]] = {}  # id of a group's first node -> the merged nodes
    dropped: set[int] = set()
    for (source, _, _), nodes in groups.items():
        replaced[id(nodes[0])] = _merged_nodes(view, source, nodes)
        dropped.update(id(node) for node in nodes[1:])
    rebuilt = []
    for node in view.graph.node:
        if id(node) in replaced:
            rebuilt.extend(replaced[id(node)])
        elif id(node) not in dropped:
            rebuilt.append(node)
    view.graph.ClearField("node")
    view.graph.node.extend(rebuilt)
    view.refresh()
    drop_unused(view)
    return len(groups)


def _merged_nodes(view: GraphView, source: str, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """MatMul by the concatenated weights, then Split into the nodes' outputs (new initializers added)."""
    weights = [numpy_helper.to_array(view.initializers[node.input[1]]) for node in nodes]
    stem = nodes[0].name or nodes[0].output[0]
    weight_name = view.unique(f"{stem}_merged_weight")
    view.graph.initializer.append(numpy_helper.from_array(np.concatenate(weights, axis=1), weight_name))
    product = view.unique(f"{stem}_merged")
    sizes = view.unique(f"{stem}_merged_sizes")
    view.graph.initializer.append(numpy_helper.from_array(np.array([w.shape[1] for w in weights], np.int64), sizes))
    matmul = onnx.helper.make_node("MatMul", [source, weight_name], [product], name=view.unique(f"{stem}_merged"))
    split = onnx.helper.make_node(
        "Split", [product, sizes], [n.output[0] for n in nodes], name=view.unique(f"{stem}_split"), axis=-1
    )
    return [matmul, split]
