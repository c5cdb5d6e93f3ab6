"""Text ids embedded from the embedding graph's own table, without an ONNX Runtime call (every decode step).

The lookup must give the graph's bytes exactly: for the plain table and for a table stored in fp16 (a Cast in
the graph), batch 2; ids the graph alone handles (the image token, ids outside the table) fall back to it;
a graph of another form gets no lookup; generation is the same token for token with and without it.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tpc.artifact_layout import EMBED
from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.compiler.precision import PrecisionSettings
from tpc.manifest import load_artifact
from tpc.runtimes.generate import generate
from tpc.runtimes.ort import OrtGraphs
from tpc.runtimes.prompting import PromptBatch
from tpc.runtimes.token_table import TokenTable


@pytest.fixture(scope="module")
def fp16_table_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("store16") / "tiny-store16"
    precision = PrecisionSettings(store_weights="fp16")
    settings = CompileSettings(model="llava-tiny", output=out, ratio=0.25, precision=precision)
    return load_artifact(compile_model(settings))


@pytest.fixture(params=["plain", "fp16-stored"])
def artifact(request, artifacts, fp16_table_artifact):
    return load_artifact(artifacts(0.89)) if request.param == "plain" else fp16_table_artifact


def _graph_only(graphs: OrtGraphs, ids: np.ndarray, features: np.ndarray) -> np.ndarray:
    tokens, graphs.tokens = graphs.tokens, None
    try:
        return graphs.embed(ids, features)
    finally:
        graphs.tokens = tokens


def test_text_ids_are_the_graphs_rows_exactly(artifact):
    graphs = OrtGraphs.from_artifact(artifact)
    runtime = artifact.runtime
    assert graphs.tokens is not None and graphs.tokens.image_token_id == runtime["image_token_id"]
    table = graphs.tokens.table
    assert isinstance(table, np.memmap) or table.nbytes < 2**20  # external data is mapped, not read
    stored = "embed" in (artifact.manifest["precision"].get("stored_fp16") or {}).get("graphs", {})
    assert table.dtype == (np.float16 if stored else np.float32) and graphs.tokens.dtype == np.float32
    ids = np.array([[5, 7, 100, runtime["vocab_size"] - 1], [1, 2, 3, 9]], np.int64)
    features = np.zeros((2, 1, runtime["feature_dim"]), np.float32)
    fast = graphs.tokens.lookup(ids)
    assert fast is not None
    slow = _graph_only(graphs, ids, features)
    assert fast.dtype == slow.dtype and fast.shape == slow.shape
    np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize("case", ["image token", "past the table", "negative", "empty"])
def test_ids_the_graph_handles_fall_back(artifact, case):
    graphs = OrtGraphs.from_artifact(artifact)
    runtime = artifact.runtime
    ids = {
        "image token": np.array([[5, runtime["image_token_id"]]]),
        "past the table": np.array([[5, runtime["vocab_size"]]]),
        "negative": np.array([[5, -1]]),
        "empty": np.zeros((1, 0), np.int64),
    }[case]
    assert graphs.tokens.lookup(ids) is None


def test_generation_is_the_same_with_and_without_the_table(artifact):
    runtime = artifact.runtime
    rng = np.random.default_rng(3)
    ids = rng.integers(5, runtime["vocab_size"], size=(2, 10)).astype(np.int64)
    ids[ids == runtime["image_token_id"]] = 6
    mask = np.ones_like(ids)
    ids[0, :2], mask[0, :2] = runtime["pad_token_id"], 0
    graphs = OrtGraphs.from_artifact(artifact)
    with_table = generate(graphs, PromptBatch(ids, mask, None, [8, 10]), runtime, 6, stop_at_eos=False)
    graphs.tokens = None
    without = generate(graphs, PromptBatch(ids, mask, None, [8, 10]), runtime, 6, stop_at_eos=False)
    assert with_table.token_ids == without.token_ids


def test_a_graph_of_another_form_gets_no_lookup(tmp_path):
    ids = onnx.helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["b", "s"])
    out = onnx.helper.make_tensor_value_info("inputs_embeds", onnx.TensorProto.FLOAT, ["b", "s", 4])
    table = onnx.numpy_helper.from_array(np.ones((8, 4), np.float32), "table")
    scale = onnx.numpy_helper.from_array(np.array(2.0, np.float32), "scale")
    nodes = [  # a scaled embedding (as some families have): not the plain form
        onnx.helper.make_node("Gather", ["table", "input_ids"], ["rows"]),
        onnx.helper.make_node("Mul", ["rows", "scale"], ["inputs_embeds"]),
    ]
    graph = onnx.helper.make_graph(nodes, "g", [ids], [out], [table, scale])
    path = tmp_path / f"{EMBED}.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    assert TokenTable.from_graph(path) is None


def test_the_lookup_keeps_the_runtime_free_of_torch():
    """The runtime reads the table with onnx alone: importing it must not pull in torch (the compiler's passes do)."""
    import subprocess
    import sys

    code = "import sys, tpc.runtimes.ort, tpc.runtimes.token_table; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )
