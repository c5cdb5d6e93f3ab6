"""Text tokens' embeddings read straight from the embedding graph's table (no ONNX Runtime call per token).

Every decode step embeds one generated token: a whole ``embed`` session run (its Python, feed and
thread-pool overhead, about 3 % of an int4 decode step on llava-bench) for one row of a table. The
embedding graph tpc exports computes, per position,

    inputs_embeds = Where(Unsqueeze(Equal(input_ids, IMAGE)), <image feature row>, Gather(T, input_ids))

with ``T`` an initializer, or ``Cast(initializer)`` where the table is stored in fp16. For ids none of
which is ``IMAGE``, that is exactly ``T[input_ids]``: ``TokenTable`` checks the graph has this form, maps
the table's bytes from the graph's external data file (no copy in memory) and answers those calls;
anything else (an image token among the ids, an id outside the table, a graph of another form) returns
None and the caller runs the graph. The runtime imports this module: it reads the graph with ``onnx`` only
(``tpc.onnx_graph``, nothing of the compiler's passes, which import torch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from tpc.onnx_graph import GraphView, attribute


class TokenTable:
    def __init__(self, table: np.ndarray, image_token_id: int, dtype: np.dtype):
        self.table = table  # [vocab, hidden], memory-mapped when the graph's weights are external
        self.image_token_id = image_token_id
        self.dtype = np.dtype(dtype)  # what the graph outputs (the table's, or the Cast's)

    @classmethod
    def from_graph(cls, path: Path) -> TokenTable | None:
        """The table of an embedding graph of the form above; None for any other graph."""
        model = onnx.load(str(path), load_external_data=False)
        view = GraphView(model.graph)
        if len(model.graph.output) != 1:
            return None
        where = view.producer.get(model.graph.output[0].name)
        if where is None or where.op_type != "Where" or len(where.input) != 3:
            return None
        image_token = _image_test(view, where.input[0])
        gather = view.producer.get(where.input[2])
        if image_token is None or gather is None or gather.op_type != "Gather" or attribute(gather, "axis", 0) != 0:
            return None
        if gather.input[1] != "input_ids":
            return None
        source, dtype = gather.input[0], None
        cast = view.producer.get(source)
        if cast is not None and cast.op_type == "Cast":
            source, dtype = cast.input[0], onnx.helper.tensor_dtype_to_np_dtype(attribute(cast, "to"))
        init = view.initializers.get(source)
        if init is None or len(init.dims) != 2:
            return None
        table = _mapped(init, Path(path).parent)
        if table is None:
            return None
        return cls(table, image_token, dtype or table.dtype)

    def lookup(self, input_ids: np.ndarray) -> np.ndarray | None:
        """``[B, S, hidden]`` embeddings of ``input_ids`` (int64 [B, S]); None when the graph must run."""
        if input_ids.size == 0 or (input_ids == self.image_token_id).any():
            return None
        if input_ids.min() < 0 or input_ids.max() >= self.table.shape[0]:
            return None  # the graph's own error or wrap-around, not numpy's
        return np.asarray(self.table[input_ids], dtype=self.dtype)


def _image_test(view: GraphView, name: str) -> int | None:
    """The id ``c`` when ``name`` is ``Unsqueeze(Equal(input_ids, c), [-1])`` (either operand order)."""
    unsqueeze = view.producer.get(name)
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or len(unsqueeze.input) < 2:
        return None
    axes = view.constant(unsqueeze.input[1])
    equal = view.producer.get(unsqueeze.input[0])
    if axes is None or axes.reshape(-1).tolist() not in ([-1], [2]) or equal is None or equal.op_type != "Equal":
        return None
    for ids, constant in (equal.input, reversed(equal.input)):
        value = view.constant(constant)
        if ids == "input_ids" and value is not None and value.size == 1:
            return int(value.reshape(-1)[0])
    return None


def _mapped(init: onnx.TensorProto, folder: Path) -> np.ndarray | None:
    """The initializer's values: a read-only memory map of its external data, or (inline) a copy."""
    dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
    if init.data_location != onnx.TensorProto.EXTERNAL:
        return numpy_helper.to_array(init)
    info = {entry.key: entry.value for entry in init.external_data}
    shape = tuple(init.dims)
    length = int(np.prod(shape)) * dtype.itemsize
    if "location" not in info or int(info.get("length", length)) != length:
        return None
    return np.memmap(folder / info["location"], dtype=dtype, mode="r", offset=int(info.get("offset", 0)), shape=shape)
