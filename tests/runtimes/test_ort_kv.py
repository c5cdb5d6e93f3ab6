"""ONNX Runtime keeps a flat decoder's KV cache between steps (``OrtGraphs.decoder_kv``).

The quantized tiny artifact's decoder is rewritten by the ONNX decoder passes, its attention into
``GroupQueryAttention``: the runtime binds one buffer per layer as past and present, and ONNX Runtime
appends to it in place. It generates the same tokens as the same graph with the KV cache round-tripped
through numpy: batch 2, one prompt left-padded. Runtimes without ``decoder_kv`` (Triton BLS, TensorRT)
keep the numpy path.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tpc.artifact_layout import DECODER
from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.compiler.precision import PrecisionSettings
from tpc.manifest import load_artifact
from tpc.runtimes.decoders import FlatDecoder
from tpc.runtimes.generate import generate
from tpc.runtimes.ort import OrtGraphs
from tpc.runtimes.prompting import PromptBatch


@pytest.fixture(scope="module")
def int4_artifact(tmp_path_factory):
    precision = PrecisionSettings(quantize=4, min_logit_cosine=0.5, min_token_agreement=0.2)
    out = tmp_path_factory.mktemp("int4") / "tiny-int4"
    return load_artifact(compile_model(CompileSettings(model="llava-tiny", output=out, ratio=0.5, precision=precision)))


def _batch(runtime: dict) -> PromptBatch:
    rng = np.random.default_rng(1)
    ids = rng.integers(3, 300, size=(2, 12)).astype(np.int64)
    ids[ids == runtime["image_token_id"]] = 5
    mask = np.ones_like(ids)
    ids[0, :3], mask[0, :3] = runtime["pad_token_id"], 0  # left padding
    return PromptBatch(ids, mask, None, [9, 12])


def test_the_decoder_was_rewritten_and_quantized(int4_artifact):
    stats = int4_artifact.manifest["precision"]["quantized_graphs"][DECODER]
    assert stats["rewrites"]["merge_projections"] == 2 * int4_artifact.runtime["num_layers"]
    assert stats["rewrites"]["rotary_embedding"] == 2 * int4_artifact.runtime["num_layers"]
    assert stats["rewrites"]["group_query_attention"] == int4_artifact.runtime["num_layers"]
    model = onnx.load(str(int4_artifact.graph_path(DECODER)), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    assert {"SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "MatMulNBits"} <= ops
    assert "GroupQueryAttention" in ops and not {"Softmax", "RotaryEmbedding"} & ops  # rotary inside GQA
    assert {p.key: p.value for p in model.metadata_props}["tpc.kv_buffer"] == "shared"


def test_in_place_kv_gives_the_numpy_path_tokens(int4_artifact):
    graphs = OrtGraphs.from_artifact(int4_artifact)
    assert graphs.decoder_kv == graphs._decoder_in_place
    runtime = int4_artifact.runtime
    fast = generate(graphs, _batch(runtime), runtime, 8, stop_at_eos=False)
    graphs.decoder_kv = None  # the numpy round trip every other runtime takes
    slow = generate(graphs, _batch(runtime), runtime, 8, stop_at_eos=False)
    assert fast.token_ids == slow.token_ids
    assert fast.kv_lengths == slow.kv_lengths and fast.kv_cache_bytes == slow.kv_cache_bytes


def test_a_position_beyond_the_rotary_caches_is_a_usage_error(int4_artifact):
    from tpc.errors import UsageError

    graphs = OrtGraphs.from_artifact(int4_artifact)
    runtime = int4_artifact.runtime
    assert graphs.max_positions == runtime["max_context"]
    decoder = FlatDecoder(graphs, runtime)
    embeds = np.zeros((1, 2, runtime["hidden_size"]), np.float32)
    with pytest.raises(UsageError, match="beyond the model's context"):
        decoder.prefill(embeds, np.ones((1, 2), np.int64), np.array([[0, runtime["max_context"]]]))


def test_a_runner_without_decoder_kv_uses_numpy(int4_artifact):
    class NumpyOnly:  # what Triton's BLS graphs and TensorRT offer: ``decoder`` only
        def __init__(self, inner):
            self.inner = inner

        def decoder(self, *args):
            return self.inner.decoder(*args)

    graphs = OrtGraphs.from_artifact(int4_artifact)
    runtime = int4_artifact.runtime
    decoder = FlatDecoder(NumpyOnly(graphs), runtime)
    embeds = graphs.embed(np.array([[5, 6, 7]]), np.zeros((1, 1, runtime["feature_dim"]), np.float32))
    decoder.prefill(embeds, np.ones((1, 3), np.int64), np.arange(3)[None])
    decoder.step(embeds[:, -1:])
    assert all(isinstance(p, np.ndarray) for p in decoder.past) and decoder.kv_lengths()[0] == 4


def test_an_artifact_from_a_newer_onnxruntime_is_a_usage_error(int4_artifact, monkeypatch):
    """A session this ONNX Runtime cannot create (say, a contrib op input it lacks) from an artifact compiled
    with a newer one: one line that names both versions."""
    from tpc.errors import UsageError
    from tpc.manifest import Artifact

    def cannot_load(*args, **kwargs):
        raise RuntimeError("Node (gqa) has input size 17 not in range [min=7, max=12].\ndetail")

    manifest = {**int4_artifact.manifest, "versions": {**int4_artifact.manifest["versions"], "onnxruntime": "99.0.0"}}
    newer = Artifact(int4_artifact.root, manifest)
    monkeypatch.setattr(OrtGraphs, "__init__", cannot_load)
    with pytest.raises(UsageError, match=r"compiled with onnxruntime 99\.0\.0 and this is .*input size 17"):
        OrtGraphs.from_artifact(newer)
    with pytest.raises(RuntimeError, match="input size 17"):  # same version: the error as ONNX Runtime gave it
        OrtGraphs.from_artifact(int4_artifact)
