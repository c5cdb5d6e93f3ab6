"""A decoder graph run a few layers at a time equals the whole graph (what a 7 B verification needs)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.compiler.precision import PrecisionSettings
from tpc.compiler.verify_segments import DecoderPieces, segment_of_nodes, split_model
from tpc.runtimes.decoders import FlatDecoder
from tpc.runtimes.ort import OrtGraphs, session_options


@pytest.fixture(scope="module")
def half_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("pieces") / "fp16"
    settings = CompileSettings(
        model="llava-tiny", output=out, ratio=0.5, target="onnx", precision=PrecisionSettings(dtype="fp16")
    )
    return compile_model(settings)


def _calls(runtime: dict, steps: int = 3, seed: int = 0) -> list[dict]:
    """Prefill of a left-padded batch of 2, then single-token steps."""
    rng = np.random.default_rng(seed)
    b, t, hidden = 2, 9, runtime["hidden_size"]
    mask = np.ones((b, t), np.int64)
    mask[1, :2] = 0
    calls = [
        {
            "inputs_embeds": (rng.standard_normal((b, t, hidden)) * 0.5).astype(np.float32),
            "attention_mask": mask,
            "position_ids": np.clip(mask.cumsum(1) - 1, 0, None),
        }
    ]
    for _ in range(steps):
        previous = calls[-1]
        calls.append(
            {
                "inputs_embeds": (rng.standard_normal((b, 1, hidden)) * 0.5).astype(np.float32),
                "attention_mask": np.concatenate([previous["attention_mask"], np.ones((b, 1), np.int64)], 1),
                "position_ids": previous["position_ids"][:, -1:] + 1,
            }
        )
    return calls


def test_pieces_equal_the_whole_graph_and_leave_no_files(half_artifact):
    manifest = json.loads((half_artifact / "manifest.json").read_text())
    runtime = manifest["runtime"]
    path = half_artifact / manifest["graphs"]["decoder"]["file"]
    before = sorted(p.name for p in half_artifact.iterdir())
    pieces = DecoderPieces.load(path)
    assert pieces is not None and len(pieces.models) == 4  # a quarter of the decoder's weights each
    sequences = [_calls(runtime, seed=0), _calls(runtime, steps=2, seed=1)]
    got = pieces.run(session_options({}), sequences)
    graphs = OrtGraphs({"decoder": path}, {}, runtime["num_layers"])
    for calls, logits in zip(sequences, got, strict=True):
        decoder = FlatDecoder(graphs, runtime)
        first = calls[0]
        want = [decoder.prefill(first["inputs_embeds"], first["attention_mask"], first["position_ids"])]
        want += [decoder.step(c["inputs_embeds"]) for c in calls[1:]]
        assert len(logits) == len(want)
        for value, expected in zip(logits, want, strict=True):  # fp16 graphs: within 2 half-precision ulps
            assert np.abs(value - expected).max() <= 2 * np.spacing(np.float16(np.abs(expected).max()))
            assert np.array_equal(value.argmax(-1), expected.argmax(-1))
    assert sorted(p.name for p in half_artifact.iterdir()) == before
    # compile verified the same way: its report says how the decoder ran
    assert manifest["verification"]["decoder"]["run"] == "in 4 pieces"


def _layered(reads_foreign_values: bool) -> onnx.ModelProto:
    """Two 'layers' (name scopes) of Add on a residual stream; layer 0 also reads layer 1's past."""

    def scoped(node, layer):
        entry = node.metadata_props.add()
        entry.key, entry.value = "pkg.torch.onnx.name_scopes", str(["", "model", f"model.layers.{layer}"])
        return node

    foreign = helper.make_node("Identity" if reads_foreign_values else "Shape", ["past_key_1"], ["probe"])
    nodes = [
        scoped(helper.make_node("Add", ["x", "w0"], ["h0"]), 0),
        scoped(foreign, 0),
        scoped(helper.make_node("Add", ["h0", "w1"], ["logits"]), 1),
    ]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "g",
        [value("x", TensorProto.FLOAT, [1, 4]), value("past_key_1", TensorProto.FLOAT, [1, 2, "p", 4])],
        [value("logits", TensorProto.FLOAT, [1, 4]), value("probe", TensorProto.FLOAT, None)],
        initializer=[
            helper.make_tensor("w0", TensorProto.FLOAT, [1, 4], [1.0] * 4),
            helper.make_tensor("w1", TensorProto.FLOAT, [1, 4], [2.0] * 4),
        ],
        value_info=[value("h0", TensorProto.FLOAT, [1, 4])],
    )
    return helper.make_model(graph)


def test_cuts_follow_layer_scopes_and_refuse_a_foreign_past_read_by_value():
    model = _layered(reads_foreign_values=False)
    pieces = segment_of_nodes(model.graph, max_bytes=16)
    assert pieces == [0, 0, 1]
    first, second = split_model(model, pieces)
    assert [o.name for o in first.graph.output] == ["probe", "h0"] and [i.name for i in second.graph.input] == ["h0"]
    assert segment_of_nodes(model.graph, max_bytes=1 << 20) is None  # everything fits one piece: no cut
    with pytest.raises(ValueError, match="reads the values of past_key_1"):
        split_model(_layered(reads_foreign_values=True), pieces)
