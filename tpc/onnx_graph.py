"""A small view of one ONNX graph: who produces and who reads each value.

The torch-FX passes (``passes/infra.py``) edit the traced vision graph; the ``passes/onnx_*`` passes
edit the exported decoder graph (``onnx.GraphProto``) in place, before weight quantization, and the
runtime reads graphs it recognises (``runtimes/token_table.py``). ``GraphView`` answers the questions
they ask: the node that writes a value, the nodes that read it, and the value of a constant (an
initializer or a ``Constant`` node's tensor). It imports ``onnx`` only, so the runtime can use it
without the compiler's passes (which import torch).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


class GraphView:
    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the maps after nodes were added or removed."""
        graph = self.graph
        self.initializers = {init.name: init for init in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {value.name for value in graph.output}
        self.value_info = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}
        self.taken = set(self.producer) | set(self.initializers) | {value.name for value in graph.input}

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a ``Constant`` node's output; None for a computed value."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
                if attr.name == "value_int":
                    return np.array(attr.i, dtype=np.int64)
                if attr.name == "value_ints":
                    return np.array(list(attr.ints), dtype=np.int64)
                if attr.name == "value_float":
                    return np.array(attr.f, dtype=np.float32)
        return None

    def shape_of(self, name: str) -> list | None:
        """The recorded shape of a value (dims as names or sizes), when the exporter recorded every dim."""
        value = self.value_info.get(name)
        if value is None or not value.type.tensor_type.HasField("shape"):
            return None
        dims = [
            d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in value.type.tensor_type.shape.dim
        ]
        return None if None in dims or "" in dims else dims

    def only_reader(self, name: str) -> onnx.NodeProto | None:
        """The one node that reads ``name`` (None when it is read by several nodes or is a graph output)."""
        readers = self.consumers.get(name, [])
        if len(readers) != 1 or name in self.outputs:
            return None
        return readers[0]

    def unique(self, name: str) -> str:
        return unique_name(name, self.taken)

    def producer_chain(self, name: str, ops: tuple[str, ...]) -> list[onnx.NodeProto] | None:
        """The producers of ``name`` walking input 0 upwards, when their op types are ``ops``; else None."""
        nodes = []
        for op in ops:
            node = self.producer.get(name)
            if node is None or node.op_type != op:
                return None
            nodes.append(node)
            name = node.input[0]
        return nodes

    def rename_input(self, old: str, new: str) -> None:
        """Every node that read ``old`` reads ``new`` (graph outputs named ``old`` are left alone)."""
        for node in self.consumers.get(old, []):
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new

    def remove(self, dead: list[onnx.NodeProto]) -> None:
        ids = {id(node) for node in dead}
        kept = [node for node in self.graph.node if id(node) not in ids]
        self.graph.ClearField("node")
        self.graph.node.extend(kept)
        self.refresh()


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_1``, ``name_2``, ... : the first not in ``taken`` (which then holds it)."""
    candidate, i = name, 0
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    taken.add(candidate)
    return candidate


def attribute(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def drop_unused(view: GraphView) -> int:
    """Remove nodes none of whose outputs is read or is a graph output, then initializers no node reads;
    returns how many nodes went."""
    removed = 0
    while True:
        dead = [
            node
            for node in view.graph.node
            if not any(out in view.outputs or view.consumers.get(out) for out in node.output)
        ]
        if not dead:
            break
        removed += len(dead)
        view.remove(dead)
    unread = [
        init for init in view.graph.initializer if init.name not in view.consumers and init.name not in view.outputs
    ]
    for init in unread:
        view.graph.initializer.remove(init)
    if unread:
        view.refresh()
    return removed


def sort_topologically(view: GraphView) -> None:
    """Nodes in an order where every value is produced before it is read (after a pass appended nodes)."""
    nodes = list(view.graph.node)
    producer = {name: i for i, node in enumerate(nodes) for name in node.output if name}
    waiting = [0] * len(nodes)
    readers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for j in {producer[name] for name in node.input if name in producer}:
            waiting[i] += 1
            readers.setdefault(j, []).append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    ordered = []
    while ready:
        i = ready.pop()
        ordered.append(nodes[i])
        for j in readers.get(i, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    if len(ordered) != len(nodes):
        raise ValueError("the graph has a cycle after a rewrite")
    view.graph.ClearField("node")
    view.graph.node.extend(ordered)
    view.refresh()
