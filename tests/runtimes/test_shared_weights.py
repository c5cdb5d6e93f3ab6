"""The grid graphs of one artifact share one memory-mapped copy of their weights in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.runtimes.ort import OrtGraphs
from tpc.runtimes.shared_weights import SharedWeights


def test_grid_sessions_read_one_mapping_and_compute_the_same(tmp_path):
    out = compile_model(
        CompileSettings(
            model="qwen2.5-vl-tiny",
            output=tmp_path / "q",
            ratio=0.5,
            image_sizes=[(224, 224), (168, 280)],
            verify=False,
        )
    )
    paths = {p.name.split(".")[0]: p for p in out.glob("*.onnx")}
    vision = {n: p for n, p in paths.items() if n.startswith("vision_")}
    assert len(vision) == 2 and (out / "vision.weights").is_file()
    shared = SharedWeights.of(paths)
    assert shared is not None
    graphs = OrtGraphs(paths, {}, num_layers=4)
    assert graphs.shared is not None
    rng = np.random.default_rng(0)
    for name, path in vision.items():
        options = ort.SessionOptions()
        assert shared.attach(path, options) > 0  # every weight comes from the shared mapping
        patches = rng.standard_normal((2, int(np.prod(name[7:].split("x"), dtype=int)), 1176)).astype(np.float32)
        private = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        want = private.run(None, {"pixel_patches": patches})
        got = graphs.run_graph(name, {"pixel_patches": patches})
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got[1], want[1])
    assert SharedWeights.of({n: p for n, p in paths.items() if n != "vision_12x20"}) is None  # one user: no sharing
