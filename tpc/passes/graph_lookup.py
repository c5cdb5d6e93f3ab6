"""Finding things in a traced graph: module paths, attention nodes, named values.

Passes locate their targets through the ``nn_module_stack`` metadata torch.export
records on every node, with module paths supplied by the model adapter, and mark the
values they create with ``node.meta["tpc_value"]`` so later passes can find them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch.fx import GraphModule, Node
from torch.fx.proxy import GraphAppendingTracer, Proxy

from tpc.errors import ExportError

TPC_VALUE = "tpc_value"
_SDPA_TARGETS = {torch.ops.aten.scaled_dot_product_attention.default, torch.nn.functional.scaled_dot_product_attention}
_ROOT_PREFIX = re.compile(r"^(L\['self'\]\.|L__self___?)")


def module_path(node: Node) -> str | None:
    """Innermost module path of ``node`` (``vision_tower.encoder.layers.3.mlp.fc1``) or None."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return _ROOT_PREFIX.sub("", path)


def in_module(node: Node, prefix: str) -> bool:
    path = module_path(node)
    return path is not None and (path == prefix or path.startswith(prefix + "."))


def layer_prefix(layers_path: str, index: int) -> str:
    return f"{layers_path}.{index}"


def find_attention(gm: GraphModule, layers_path: str, index: int) -> Node:
    """The fused-attention node of layer ``index`` under ``layers_path``."""
    prefix = layer_prefix(layers_path, index)
    hits = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in _SDPA_TARGETS and in_module(n, prefix)]
    if len(hits) != 1:
        raise ExportError(f"expected one scaled_dot_product_attention in {prefix}, found {len(hits)}")
    return hits[0]


def find_value(gm: GraphModule, name: str) -> Node | None:
    """The node an earlier pass tagged as ``name``."""
    for node in gm.graph.nodes:
        if node.meta.get(TPC_VALUE) == name:
            return node
    return None


def output_node(gm: GraphModule) -> Node:
    return next(n for n in reversed(gm.graph.nodes) if n.op == "output")


def output_values(gm: GraphModule) -> list[Node]:
    """The graph's outputs as a flat list (plain codegen: output(tuple))."""
    (values,) = output_node(gm).args
    return list(values) if isinstance(values, (tuple, list)) else [values]


def set_output_values(gm: GraphModule, values: list[Node]) -> None:
    output_node(gm).args = (tuple(values),)


def call_in_graph(gm: GraphModule, fn: Callable[..., Any], *nodes: Node, **constants: Any):
    """Record ``fn(*nodes, **constants)`` into ``gm.graph`` at the current insert point.

    ``fn`` is ordinary torch code (a method's score, a selection); it runs on FX
    proxies so every op it performs becomes a node. Returns the result node(s).
    """
    tracer = GraphAppendingTracer(gm.graph)
    result = fn(*(Proxy(n, tracer) for n in nodes), **constants)
    if isinstance(result, tuple):
        return tuple(r.node for r in result)
    return result.node


def record_select(
    gm: GraphModule, fn: Callable[..., Any], inputs: dict[str, Node], static: dict[str, Any], **constants: Any
):
    """Record a method's ``select(values, **constants)`` into the graph; returns result nodes.

    ``values`` maps each input name to a proxy of its node, plus the static entries
    (``grid``...) and ``constant``: a factory that turns a Python list into a graph
    constant (a buffer of ``gm`` read with get_attr).
    """
    tracer = GraphAppendingTracer(gm.graph)

    def constant(data):
        name = f"_tpc_constant_{sum(1 for n, _ in gm.named_buffers() if n.startswith('_tpc_constant_'))}"
        gm.register_buffer(name, torch.as_tensor(data))
        return Proxy(gm.graph.get_attr(name), tracer)

    values = {name: Proxy(node, tracer) for name, node in inputs.items()}
    values.update(static, constant=constant)
    result = fn(values, **constants)
    return tuple(r.node for r in result)


def nodes_in(gm: GraphModule, prefix: str) -> list[Node]:
    return [n for n in gm.graph.nodes if in_module(n, prefix)]
