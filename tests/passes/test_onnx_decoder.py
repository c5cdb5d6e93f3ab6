"""The ONNX decoder passes: a rewritten decoder graph computes what the exported one does.

Each family's tiny decoder is exported once, rewritten by ``optimize_decoder``, and both graphs run
on the same random inputs through ONNX Runtime: batch 2, the first row left-padded, position ids
with a gap (a pruned prompt keeps its original positions), prefill then a decode step on the past.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

from tpc.compiler import graphs as G
from tpc.models.families import make_adapter
from tpc.models.presets import PRESETS, build_preset
from tpc.passes.onnx_decoder import DECODER_PASSES, optimize_decoder

# (preset, decoder overrides, rewrites expected): llama with GQA, llama with as many KV heads as query
# heads (no repeat_kv), Qwen2 with q/k/v biases, Qwen2 with M-RoPE (3-D position ids)
CASES = {
    "llama-gqa": ("llava-tiny", {}, {"key_transpose": 4, "rotary_embedding": 8, "group_query_attention": 4}),
    "llama-mha": (
        "llava-tiny",
        {"num_key_value_heads": 4},
        {"key_transpose": 4, "rotary_embedding": 8, "group_query_attention": 4},
    ),
    "qwen2-bias": ("llava-onevision-tiny", {}, {"key_transpose": 4, "rotary_embedding": 8, "group_query_attention": 4}),
    # M-RoPE: rotary and attention kept as exported
    "qwen2-mrope": ("qwen2.5-vl-tiny", {}, {"key_transpose": 4, "rotary_embedding": 0, "group_query_attention": 0}),
}


MAX_POSITIONS = 64  # rotary caches: every position the inputs below use


@pytest.fixture(scope="module", params=list(CASES))
def decoder_pair(request, tmp_path_factory):
    """(exported decoder path, rewritten decoder path, text layout, rewrites, expected rewrites)."""
    name, overrides, expected = CASES[request.param]
    preset = PRESETS[name]
    if overrides:
        preset = dataclasses.replace(preset, text={**preset.text, **overrides})
    adapter = make_adapter(*build_preset(preset))
    out = tmp_path_factory.mktemp(request.param)
    path = G.export_decoder(adapter.decoder_step(), adapter.text, out)
    model = onnx.load(str(path))
    rewrites = optimize_decoder(model, max_positions=MAX_POSITIONS)
    fused = out / "fused.onnx"
    onnx.save_model(model, str(fused), save_as_external_data=True, location="fused.onnx.data")
    return path, fused, adapter.text, rewrites, expected


def _session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(text, rng, past_len: int, seq: int, start: np.ndarray, past=None) -> dict[str, np.ndarray]:
    b = 2
    mask = np.ones((b, past_len + seq), np.int64)
    mask[0, :2] = 0  # row 0 left-padded
    positions = start[:, None] + np.arange(seq)[None]
    positions[1, seq // 2 :] += 7  # row 1: a gap, as after pruning
    if text.position_dims > 1:
        positions = np.repeat(positions[..., None], text.position_dims, axis=2)
        positions[..., 1] += 3  # M-RoPE: distinct height / width positions
    feeds = {
        "inputs_embeds": rng.standard_normal((b, seq, text.hidden_size)).astype(np.float32),
        "attention_mask": mask,
        "position_ids": positions.astype(np.int64),
    }
    names = G.kv_names(text.num_layers, "past")
    if past is None:
        past = [np.zeros((b, text.num_kv_heads, 0, text.head_dim), np.float32) for _ in names]
    feeds.update(zip(names, past, strict=True))
    return feeds


def _assert_close(got, want, mask) -> None:
    """Logits, and the KV cache at the keys the mask keeps: a left-padded row's padding rows are never read
    (GroupQueryAttention gives the padding queries other, unused values than the exported graph)."""
    if got.ndim == 4:
        for row in range(got.shape[0]):
            keys = np.flatnonzero(mask[row][: got.shape[2]])
            np.testing.assert_allclose(got[row][:, keys], want[row][:, keys], rtol=1e-4, atol=1e-4)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _same_outputs(path, fused, text) -> None:
    """Prefill, then a decode step on its KV: the rewritten graph's outputs equal the exported one's."""
    reference, rewritten = _session(path), _session(fused)
    rng = np.random.default_rng(0)
    prefill = _feeds(text, rng, 0, 6, np.array([0, 0]))
    want, got = reference.run(None, prefill), rewritten.run(None, prefill)
    for a, b in zip(want, got, strict=True):
        _assert_close(b, a, prefill["attention_mask"])
    step = _feeds(text, rng, 6, 1, np.array([4, 13]), past=want[1:])
    for a, b in zip(reference.run(None, step), rewritten.run(None, step), strict=True):
        _assert_close(b, a, step["attention_mask"])


def test_rewrites_keep_the_outputs(decoder_pair):
    path, fused, text, rewrites, expected = decoder_pair
    for key, count in expected.items():
        assert rewrites[key] == count, rewrites
    assert rewrites["skip_rms_norm"] == 2 * text.num_layers  # every norm of a residual sum
    assert rewrites["rms_norm_as_division"] == 1  # the first layer's, on the embeddings
    assert rewrites["merge_projections"] == 2 * text.num_layers  # q/k/v and gate/up of every layer
    _same_outputs(path, fused, text)


@pytest.mark.parametrize("one", [*DECODER_PASSES, "rotary_embedding"], ids=lambda p: getattr(p, "__name__", p))
def test_each_pass_alone_keeps_the_outputs(decoder_pair, one, tmp_path):
    path, _, text, *_ = decoder_pair
    model = onnx.load(str(path))
    if one == "rotary_embedding":
        optimize_decoder(model, max_positions=MAX_POSITIONS, passes=())
    else:
        optimize_decoder(model, passes=(one,))
    alone = tmp_path / "alone.onnx"
    onnx.save_model(model, str(alone), save_as_external_data=True, location="alone.onnx.data")
    _same_outputs(path, alone, text)


def test_rotary_caches_are_recorded_and_sized(decoder_pair):
    _, fused, text, rewrites, _ = decoder_pair
    model = onnx.load(str(fused))
    meta = {p.key: p.value for p in model.metadata_props}
    caches = [i for i in model.graph.initializer if i.name.startswith("rotary_cos_cache")]
    if rewrites["rotary_embedding"]:
        assert meta["tpc.max_positions"] == str(MAX_POSITIONS)
        assert [list(c.dims) for c in caches] == [[MAX_POSITIONS, text.head_dim // 2]]
    else:
        assert "tpc.max_positions" not in meta and not caches


def test_merged_graph_has_fewer_matmuls(decoder_pair):
    path, fused, *_ = decoder_pair

    def matmuls(p):
        return sum(n.op_type == "MatMul" for n in onnx.load(str(p), load_external_data=False).graph.node)

    assert matmuls(fused) < matmuls(path)


def test_a_graph_without_the_patterns_is_left_alone():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = onnx.helper.make_model(graph)
    before = model.SerializeToString()
    assert not any(optimize_decoder(model, max_positions=8).values())
    assert model.SerializeToString() == before


def test_in_place_kv_cache_gives_the_exported_graphs_results(decoder_pair):
    """The runtime binds one buffer per layer as past and present of a GQA decoder: prefill, decode steps and
    a multi-token chunk on the cache equal the exported graph's; the steps append in place; continuing one
    cache twice (a fork) leaves the first continuation intact."""
    from tpc.runtimes.ort import OrtGraphs

    path, fused, text, rewrites, _ = decoder_pair
    graphs = OrtGraphs({G.DECODER: fused}, {"intra_op_num_threads": 1}, text.num_layers)
    if not rewrites["group_query_attention"]:
        assert graphs.decoder_kv == graphs._decoder_kv  # KV as OrtValues, no buffer bound twice
        return
    assert graphs.decoder_kv == graphs._decoder_in_place
    reference, rng = _session(path), np.random.default_rng(1)

    def both(feeds, past):
        want = reference.run(None, feeds)
        names = ("inputs_embeds", "attention_mask", "position_ids")
        logits, present = graphs.decoder_kv(*(feeds[n] for n in names), past)
        for a, b in zip(want, [logits, *present], strict=True):
            _assert_close(b, a, feeds["attention_mask"])
        return want[1:], present

    feeds = _feeds(text, rng, 0, 6, np.array([0, 0]))
    want, got = both(feeds, [feeds[n] for n in G.kv_names(text.num_layers, "past")])
    buffers = [p.base for p in got]
    for i in range(3):
        want, got = both(_feeds(text, rng, 6 + i, 1, np.array([4 + i, 13 + i]), past=want), got)
        assert [p.base for p in got] == buffers  # appended in place
    fork_want, fork_got = want, got
    first_want, first_got = both(_feeds(text, rng, 9, 1, np.array([7, 16]), past=fork_want), fork_got)
    both(_feeds(text, rng, 9, 1, np.array([7, 16]), past=fork_want), fork_got)  # the same cache again
    for a, b in zip(first_want, first_got, strict=True):  # the first continuation's last row still holds
        np.testing.assert_allclose(b[:, :, -1], a[:, :, -1], rtol=1e-4, atol=1e-4)
    both(_feeds(text, rng, 10, 3, np.array([8, 17]), past=first_want), first_got)  # a chunk after a step


def test_attention_stays_where_onnx_runtime_lacks_the_kernel_inputs(decoder_pair, monkeypatch):
    """An ONNX Runtime whose GroupQueryAttention takes no position ids / bias / query lengths: the attention
    is left as exported (the other rewrites still run) and the graph does not claim shared KV buffers."""
    import tpc.passes.onnx_group_query_attention as gqa

    path, _, text, *_ = decoder_pair
    monkeypatch.setattr(gqa, "kernel_supported", lambda: False)
    model = onnx.load(str(path))
    rewrites = optimize_decoder(model, max_positions=MAX_POSITIONS)
    assert rewrites["group_query_attention"] == 0 and rewrites["merge_projections"] == 2 * text.num_layers
    assert not any(n.op_type == "GroupQueryAttention" for n in model.graph.node)
    assert "tpc.kv_buffer" not in {p.key for p in model.metadata_props}


def test_the_installed_onnxruntime_has_the_kernel_inputs():
    from tpc.passes.onnx_group_query_attention import kernel_supported

    assert kernel_supported()  # the pinned environment's ONNX Runtime: the rewrite is tested above, not skipped
