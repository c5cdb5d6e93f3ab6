"""Each layer's attention as one ``com.microsoft.GroupQueryAttention`` (ONNX decoder graph, in place).

After ``rotary_embedding``, the exporter's attention of a Llama/Qwen2 layer reads::

    q, k, v = Reshape(x, [B, S, N, D]) -> Transpose(0, 2, 1, 3)      (q and k then RotaryEmbedding)
    present_k = Concat(past_k, k)   present_v = Concat(past_v, v)      (graph outputs)
    K, V = repeat_kv(present_k), repeat_kv(present_v)                   (Unsqueeze-Expand-Reshape, or none)
    out = Softmax(Mul(q, c) @ Mul(Transpose(K, 0, 1, 3, 2), c) + mask) @ V
    y = Reshape(Transpose(out, 0, 2, 1, 3), [B, S, N * D])

``GroupQueryAttention`` computes ``y`` and both presents in one op, from the 3-D projections: it rotates
q and k with the same cos/sin caches at the graph's own ``position_ids`` (a pruned prompt's positions
keep their gaps), appends the new keys and values to the past, reads the shared KV heads without
repeating them, applies the causal mask itself and takes the left padding as ``attention_bias``: 0 at the
keys the 2-D attention mask keeps, the float minimum at the others (the exporter's 4-D causal-and-padding
mask, a dozen small ops per step, is then unused and dropped). Where q, k and v
are the three parts of one merged projection's ``Split``, GQA reads the merged value whole. Its
``seqlens_k`` / ``total_sequence_length`` come from the 2-D attention mask (every row holds ``T`` keys,
the left padding is masked by the bias) and ``query_seqlens`` from the step's length (every row's query
is whole): with it, ONNX Runtime takes batched prompts and multi-token chunks on a cache.

The graph keeps its interface: past ``[B, Nkv, P, D]`` in, present ``[B, Nkv, P + S, D]`` out. A runtime
may instead bind one preallocated ``[B, Nkv, capacity, D]`` buffer as both past and present (ONNX Runtime
then writes the new keys in place: no copy of the cache per step); the graph records that it can as
``tpc.kv_buffer = shared`` in its metadata. Matched only where q and k come from ``RotaryEmbedding``
(M-RoPE decoders keep their attention as exported), for fp32 decoders, and only when the installed ONNX
Runtime's GQA has these inputs (``kernel_supported``).
"""

from __future__ import annotations

import numpy as np
import onnx

from tpc.onnx_graph import GraphView, attribute, drop_unused, sort_topologically

KV_BUFFER_KEY = "tpc.kv_buffer"


def _is_transpose(node: onnx.NodeProto | None, perm: list[int]) -> bool:
    return node is not None and node.op_type == "Transpose" and list(attribute(node, "perm", [])) == perm


def _heads_of(view: GraphView, name: str) -> tuple[str, int, int] | None:
    """(x, N, D) when ``name`` is ``Transpose(Reshape(x, [B, S, N, D]), [0, 2, 1, 3])`` of a 3-D ``x``."""
    transpose = view.producer.get(name)
    if not _is_transpose(transpose, [0, 2, 1, 3]):
        return None
    reshape = view.producer.get(transpose.input[0])
    shape = view.shape_of(name)
    if reshape is None or reshape.op_type != "Reshape" or shape is None or len(shape) != 4:
        return None
    heads, dim = shape[1], shape[3]
    source = view.shape_of(reshape.input[0])
    if not isinstance(heads, int) or not isinstance(dim, int) or source is None or len(source) != 3:
        return None
    if source[2] != heads * dim or view.only_reader(transpose.input[0]) is None:
        return None
    return reshape.input[0], heads, dim


def _rotated(view: GraphView, name: str) -> tuple[onnx.NodeProto, str, int, int] | None:
    """(rotary node, 3-D source, N, D) when ``name`` is a plain ``RotaryEmbedding`` of ``_heads_of``'s form."""
    rotary = view.producer.get(name)
    if rotary is None or rotary.op_type != "RotaryEmbedding" or rotary.domain != "com.microsoft":
        return None
    if any(a.name not in ("interleaved",) for a in rotary.attribute) or attribute(rotary, "interleaved", 0) != 0:
        return None
    heads = _heads_of(view, rotary.input[0])
    if heads is None or view.only_reader(name) is None:
        return None
    return rotary, *heads


def _scalar(view: GraphView, name: str) -> float | None:
    value = view.constant(name)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _scaled(view: GraphView, name: str) -> tuple[str, float]:
    """(x, c) when ``name`` is ``Mul(x, c)`` of a scalar constant read only there; else (name, 1.0)."""
    node = view.producer.get(name)
    if node is not None and node.op_type == "Mul" and view.only_reader(name) is not None:
        for x, c in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
            scale = _scalar(view, c)
            if scale is not None:
                return x, scale
    return name, 1.0


def _unrepeated(view: GraphView, name: str) -> str:
    """``present`` when ``name`` is repeat_kv's ``Reshape(Expand(Unsqueeze(present, [2])))``; else ``name``."""
    chain = view.producer_chain(name, ("Reshape", "Expand", "Unsqueeze"))
    if chain is None:
        return name
    unsqueeze = chain[2]
    axes = view.constant(unsqueeze.input[1]) if len(unsqueeze.input) > 1 else None
    if axes is None or axes.reshape(-1).tolist() != [2]:
        return name
    return unsqueeze.input[0]


def _appended(view: GraphView, present: str) -> tuple[onnx.NodeProto, str, str] | None:
    """(Concat node, past input, new value) when graph output ``present`` is ``Concat(past, new)`` on axis 2."""
    node = view.producer.get(present)
    if node is None or node.op_type != "Concat" or len(node.input) != 2 or attribute(node, "axis") not in (2, -2):
        return None
    past, new = node.input
    if present not in view.outputs or past not in {i.name for i in view.graph.input}:
        return None
    return node, past, new


class _Layer:
    """One matched attention: what the rewrite reads and what it replaces."""

    def __init__(self, **parts):
        self.__dict__.update(parts)


def _match(view: GraphView, softmax: onnx.NodeProto) -> _Layer | None:
    if attribute(softmax, "axis", -1) not in (-1, 3):
        return None
    add = view.producer.get(softmax.input[0])
    if add is None or add.op_type != "Add" or view.only_reader(softmax.input[0]) is None:
        return None
    for scores_name, mask in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        scores = view.producer.get(scores_name)
        if scores is None or scores.op_type != "MatMul" or view.only_reader(scores_name) is None:
            continue
        if len(view.shape_of(mask) or []) != 4 or view.constant(mask) is not None:
            continue
        q_rot, q_scale = _scaled(view, scores.input[0])
        k_t, k_scale = _scaled(view, scores.input[1])
        transpose = view.producer.get(k_t)
        if not _is_transpose(transpose, [0, 1, 3, 2]):
            continue
        probs_reader = view.only_reader(softmax.output[0])
        if probs_reader is None or probs_reader.op_type != "MatMul" or probs_reader.input[0] != softmax.output[0]:
            continue
        q = _rotated(view, q_rot)
        keys = _appended(view, _unrepeated(view, transpose.input[0]))
        values = _appended(view, _unrepeated(view, probs_reader.input[1]))
        if q is None or keys is None or values is None:
            continue
        k = _rotated(view, keys[2])
        v = _heads_of(view, values[2])
        if k is None or v is None:
            continue
        q_rotary, q3, heads, dim = q
        k_rotary, k3, kv_heads, k_dim = k
        v3, v_heads, v_dim = v
        if (k_dim, v_heads, v_dim) != (dim, kv_heads, dim) or heads % kv_heads:
            continue
        if list(k_rotary.input[1:]) != list(q_rotary.input[1:]):  # one position input, one cache
            continue
        out = _attention_output(view, probs_reader.output[0], heads * dim)
        if out is None:
            continue
        return _Layer(
            q3=q3,
            k3=k3,
            v3=v3,
            rotary_inputs=list(q_rotary.input[1:]),
            heads=heads,
            kv_heads=kv_heads,
            scale=q_scale * k_scale,
            mask=mask,
            key_concat=keys[0],
            value_concat=values[0],
            past_key=keys[1],
            past_value=values[1],
            output=out,
        )
    return None


def _attention_output(view: GraphView, name: str, hidden: int) -> onnx.NodeProto | None:
    """The ``Reshape(Transpose(name, [0, 2, 1, 3]), [B, S, N * D])`` that ends the attention."""
    transpose = view.only_reader(name)
    if not _is_transpose(transpose, [0, 2, 1, 3]):
        return None
    reshape = view.only_reader(transpose.output[0])
    shape = view.shape_of(reshape.output[0]) if reshape is not None and reshape.op_type == "Reshape" else None
    if shape is None or len(shape) != 3 or shape[2] != hidden or reshape.input[0] != transpose.output[0]:
        return None
    return reshape


def _packed(view: GraphView, layer: _Layer) -> str | None:
    """The merged q/k/v projection when q, k and v are the three parts, in order, of one last-axis ``Split``
    of it (GQA then reads it whole); None otherwise (biases added after the split, separate projections)."""
    split = view.producer.get(layer.q3)
    if split is None or split.op_type != "Split" or list(split.output) != [layer.q3, layer.k3, layer.v3]:
        return None
    sizes = view.constant(split.input[1]) if len(split.input) > 1 else None
    dim = view.shape_of(layer.q3)[2] // layer.heads
    wanted = [layer.heads * dim, layer.kv_heads * dim, layer.kv_heads * dim]
    if attribute(split, "axis", 0) not in (-1, 2) or sizes is None or sizes.reshape(-1).tolist() != wanted:
        return None
    return split.input[0]


def _lengths(view: GraphView) -> tuple[str, str, str, str]:
    """GQA's ``seqlens_k`` ([B] int32, T - 1), ``total_sequence_length`` (int32 scalar, T), ``query_seqlens``
    ([B] int32, S) and its padding bias ([B, 1, S, T]: 0 at the keys the 2-D ``attention_mask`` keeps, the
    float minimum at the others; GQA applies the causal part itself)."""
    make = onnx.helper.make_node
    keys = ("batch", "total_1d", "total_i32", "total", "one", "last", "seqlens", "new_1d", "new_i32", "query_seqlens")
    keys += ("keep", "keep_4d", "zero", "minimum", "bias_row", "bias_shape", "one_1d", "bias")
    names = {k: view.unique(f"gqa_{k}") for k in keys}
    initializers = {
        "one": np.array([1], np.int32),
        "zero": np.array(0, np.float32),
        "minimum": np.array(np.finfo(np.float32).min, np.float32),
        "one_1d": np.array([1], np.int64),
    }
    for key, value in initializers.items():
        view.graph.initializer.append(onnx.numpy_helper.from_array(value, names[key]))
    axes = view.unique("gqa_axes")
    view.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1, 2], np.int64), axes))
    view.graph.node.extend(
        [
            make("Shape", ["attention_mask"], [names["batch"]], start=0, end=1),
            make("Shape", ["attention_mask"], [names["total_1d"]], start=1, end=2),
            make("Cast", [names["total_1d"]], [names["total_i32"]], to=onnx.TensorProto.INT32),
            make("Squeeze", [names["total_i32"]], [names["total"]]),
            make("Sub", [names["total_i32"], names["one"]], [names["last"]]),
            make("Expand", [names["last"], names["batch"]], [names["seqlens"]]),
            make("Shape", ["inputs_embeds"], [names["new_1d"]], start=1, end=2),
            make("Cast", [names["new_1d"]], [names["new_i32"]], to=onnx.TensorProto.INT32),
            make("Expand", [names["new_i32"], names["batch"]], [names["query_seqlens"]]),
            make("Cast", ["attention_mask"], [names["keep"]], to=onnx.TensorProto.BOOL),
            make("Unsqueeze", [names["keep"], axes], [names["keep_4d"]]),
            make("Where", [names["keep_4d"], names["zero"], names["minimum"]], [names["bias_row"]]),
            make(
                "Concat",
                [names["batch"], names["one_1d"], names["new_1d"], names["total_1d"]],
                [names["bias_shape"]],
                axis=0,
            ),
            make("Expand", [names["bias_row"], names["bias_shape"]], [names["bias"]]),
        ]
    )
    return names["seqlens"], names["total"], names["query_seqlens"], names["bias"]


def kernel_supported() -> bool:
    """Whether the installed ONNX Runtime's GroupQueryAttention takes what this rewrite feeds it: the graph's
    own position ids and mask, and per-row query lengths (which make a batched prompt with gaps in its
    positions, and a multi-token chunk on a cache, valid inputs)."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as C

        schemas = [s for s in C.get_all_operator_schema() if s.name == "GroupQueryAttention"]
    except (ImportError, AttributeError):
        return False
    names = {i.name for s in schemas for i in s.inputs}
    return {"position_ids", "attention_bias", "query_seqlens"} <= names


def group_query_attention(view: GraphView) -> int:
    """Replace each matched layer's attention with ``GroupQueryAttention``; returns how many."""
    if not kernel_supported():
        return 0
    inputs = {i.name: i for i in view.graph.input}
    if "attention_mask" not in inputs or "inputs_embeds" not in inputs:
        return 0
    if inputs["inputs_embeds"].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        return 0  # ONNX Runtime's CPU kernel is what the runtime binds buffers for; half-precision decoders stay
    layers = [_match(view, node) for node in list(view.graph.node) if node.op_type == "Softmax"]
    layers = [layer for layer in layers if layer is not None]
    if not layers:
        return 0
    seqlens, total, query_seqlens, bias = _lengths(view)
    make = onnx.helper.make_node
    dead = []
    for layer in layers:
        positions, cos, sin = layer.rotary_inputs
        qkv = _packed(view, layer)
        q_k_v = [qkv, "", ""] if qkv is not None else [layer.q3, layer.k3, layer.v3]
        view.graph.node.extend(
            [
                make(
                    "GroupQueryAttention",
                    [*q_k_v, layer.past_key, layer.past_value, seqlens, total, cos, sin, positions, bias]
                    + ["", "", "", "", "", query_seqlens],
                    [layer.output.output[0], layer.key_concat.output[0], layer.value_concat.output[0]],
                    name=view.unique(f"{layer.output.output[0]}_gqa"),
                    domain="com.microsoft",
                    num_heads=layer.heads,
                    kv_num_heads=layer.kv_heads,
                    scale=layer.scale,
                    do_rotary=1,
                ),
            ]
        )
        dead += [layer.output, layer.key_concat, layer.value_concat]
    view.remove(dead)
    drop_unused(view)
    sort_topologically(view)
    return len(layers)
