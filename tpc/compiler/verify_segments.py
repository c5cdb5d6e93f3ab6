"""Run an exported decoder graph a few layers at a time, so that verifying a 7 B graph fits in memory.

ONNX Runtime's CPU provider has no fast half-precision kernels: it casts a half-precision
graph's weights to fp32, so a 13 GB fp16 decoder needs more than 26 GB to run whole. Cut at
decoder-layer boundaries, each piece holds a few layers' weights (``max_bytes`` as stored);
the pieces run one after another over every prompt and step, and the values that cross a cut
(the hidden state, and the mask and rotary tables computed once for all layers) are kept
between pieces. The result equals running the whole graph: every node runs once, on the same
inputs. A node's layer comes from the exporter's name scopes (``...layers.<i>``); a graph
without them (or with a single layer) runs whole.
"""

from __future__ import annotations

import ast
import logging
import re
import uuid
from pathlib import Path

import numpy as np
import onnx

from tpc.runtimes.ort import FLOAT_TYPES

log = logging.getLogger(__name__)
SCOPES = "pkg.torch.onnx.name_scopes"
LAYER = re.compile(r"(?:^|\.)layers\.(\d+)$")
DEFAULT_MAX_BYTES = 1 << 30  # per piece: 2-3 layers of a 7 B decoder
_ELEMENT_BYTES = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2}


def node_layer(node: onnx.NodeProto) -> int | None:
    """The decoder layer a node was exported from (None: outside the layers)."""
    for prop in node.metadata_props:
        if prop.key == SCOPES:
            for scope in ast.literal_eval(prop.value):
                match = LAYER.search(scope)
                if match:
                    return int(match.group(1))
    return None


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64)) * _ELEMENT_BYTES.get(tensor.data_type, 1)


def segment_of_nodes(graph: onnx.GraphProto, max_bytes: int) -> list[int] | None:
    """Each node's piece: consecutive layers grouped up to ``max_bytes`` of stored weights; nodes outside
    the layers go with the last layer node before them (the first piece before any). None: no cut."""
    layers = [node_layer(n) for n in graph.node]
    known = sorted({layer for layer in layers if layer is not None})
    if len(known) < 2:
        return None
    sizes = {init.name: _tensor_bytes(init) for init in graph.initializer}
    weight = dict.fromkeys(known, 0)
    for node, layer in zip(graph.node, layers, strict=True):
        if layer is not None:
            weight[layer] += sum(sizes.get(name, 0) for name in node.input)
    piece, used, of_layer = 0, 0, {}
    for layer in known:
        if used and used + weight[layer] > max_bytes:
            piece, used = piece + 1, 0
        of_layer[layer], used = piece, used + weight[layer]
    if piece == 0:
        return None
    current, pieces = 0, []
    for layer in layers:
        current = of_layer[layer] if layer is not None else current
        pieces.append(current)
    return pieces


def _value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    infos = {v.name: v for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    return infos


def split_model(model: onnx.ModelProto, pieces: list[int]) -> list[onnx.ModelProto]:
    """The sub-models of ``model`` (loaded without its external data: initializers keep their
    references) whose outputs are the graph outputs they make and every value a later piece reads."""
    graph = model.graph
    infos = _value_infos(model)
    initializers = {init.name: init for init in graph.initializer}
    produced_in = {out: piece for node, piece in zip(graph.node, pieces, strict=True) for out in node.output}
    needed_later: dict[int, set[str]] = {}
    for node, piece in zip(graph.node, pieces, strict=True):
        for name in node.input:
            if name in produced_in and produced_in[name] < piece:
                needed_later.setdefault(produced_in[name], set()).add(name)
    graph_outputs = [o.name for o in graph.output]
    models = []
    for piece in range(max(pieces) + 1):
        nodes = [n for n, p in zip(graph.node, pieces, strict=True) if p == piece]
        made = {out for n in nodes for out in n.output}
        reads = [name for n in nodes for name in n.input if name and name not in made]
        inputs = list(dict.fromkeys(name for name in reads if name not in initializers))
        outputs = [name for name in graph_outputs if name in made]
        outputs += sorted(needed_later.get(piece, set()) - set(outputs))
        own = {"past_" + name.removeprefix("present_") for name in outputs if name.startswith("present_")}
        for node in nodes:
            foreign = [n for n in node.input if n.startswith("past_") and n in inputs and n not in own]
            if foreign and node.op_type != "Shape":
                raise ValueError(f"{node.name} reads the values of {foreign[0]}, another piece's past keys/values")
        missing = [name for name in inputs + outputs if name not in infos]
        if missing:
            raise ValueError(f"no type information for {missing[:3]} in the exported graph")
        sub = onnx.helper.make_graph(
            nodes,
            f"{graph.name}_piece{piece}",
            [infos[name] for name in inputs],
            [infos[name] for name in outputs],
            initializer=[initializers[name] for name in dict.fromkeys(reads) if name in initializers],
        )
        sub_model = onnx.helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
        sub_model.functions.extend(model.functions)
        models.append(sub_model)
    return models


def _zeros_past(info, batch: int, length: int) -> np.ndarray:
    dims = [d if isinstance(d, int) else 0 for d in info.shape]  # onnxruntime's NodeArg: ints or axis names
    dims[0], dims[2] = batch, length
    return np.zeros(dims, FLOAT_TYPES.get(info.type, np.float32))


class DecoderPieces:
    """A decoder graph cut into pieces of a few layers (``load`` returns None when there is no cut)."""

    def __init__(self, path: Path, models: list[onnx.ModelProto], outputs: list[str]):
        self.path, self.models = path, models
        self.outputs = outputs  # the graph's outputs other than its present keys and values

    @classmethod
    def load(cls, path: Path, max_bytes: int | None = None, whole: bool = False) -> DecoderPieces | None:
        """``max_bytes`` of stored weights per piece; default: a quarter of the decoder, at most 1 GiB.
        ``whole``: a graph without a cut is one piece (instead of None)."""
        model = onnx.load(str(path), load_external_data=False)
        if max_bytes is None:
            total = sum(_tensor_bytes(init) for init in model.graph.initializer)
            max_bytes = min(DEFAULT_MAX_BYTES, total // 4)
        pieces = segment_of_nodes(model.graph, max_bytes)
        outputs = [o.name for o in model.graph.output if not o.name.startswith("present_")]
        try:
            if pieces is not None:
                return cls(Path(path), split_model(model, pieces), outputs)
        except ValueError as exc:  # a graph this cut does not understand runs whole
            log.warning("decoder runs whole for verification: %s", exc)
        return cls(Path(path), [model], outputs) if whole else None

    def run(self, options, calls: list[list[dict[str, np.ndarray]]]) -> list[list[np.ndarray]]:
        """Logits (fp32) of every call of every sequence of a flat decoder (``run_calls``)."""
        outputs = self.run_calls(options, calls)
        return [[step["logits"].astype(np.float32) for step in steps] for steps in outputs]

    def run_calls(
        self, options, calls: list[list[dict[str, np.ndarray]]], first: str = "inputs_embeds"
    ) -> list[list[dict[str, np.ndarray]]]:
        """The graph's outputs (but its present keys and values) for every call of every sequence:
        ``calls[s]`` is sequence s's prefill then decode steps (``first``, the hidden input, with
        ``attention_mask`` and ``position_ids``); each piece keeps its own past keys and values from
        step to step. One piece's session exists at a time."""
        import onnxruntime as ort

        carried: list[list[dict[str, np.ndarray]]] = [[{} for _ in steps] for steps in calls]
        for sub in self.models:
            file = self.path.parent / f".piece-{uuid.uuid4().hex}.onnx"  # beside the weights it references
            try:
                onnx.save(sub, str(file))
                session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
            finally:
                file.unlink(missing_ok=True)
            inputs = {i.name: i for i in session.get_inputs()}
            names = [o.name for o in session.get_outputs()]
            own = {"past_" + name.removeprefix("present_") for name in names if name.startswith("present_")}
            for s, steps in enumerate(calls):
                past: dict[str, np.ndarray] = {}
                length = 0  # tokens before this step: every layer's past length in the graph
                for t, feeds in enumerate(steps):
                    feed, batch = {}, feeds[first].shape[0]
                    for name, info in inputs.items():
                        if name.startswith("past_"):  # another piece's layer: the exporter reads only its shape
                            value = past[name] if name in own and t else _zeros_past(info, batch, length)
                        else:
                            value = feeds[name] if name in feeds else carried[s][t][name]
                        kind = FLOAT_TYPES.get(info.type)
                        feed[name] = value.astype(kind) if kind is not None and value.dtype != kind else value
                    for name, value in zip(names, session.run(None, feed), strict=True):
                        if name.startswith("present_"):
                            past["past_" + name.removeprefix("present_")] = value
                        else:
                            carried[s][t][name] = value
                    length += feeds[first].shape[1]
            del session
        return [[{name: values[name] for name in self.outputs} for values in steps] for steps in carried]
