"""Reduced precision for grid families (Qwen2.5-VL tiny): fp16 graphs and int8 decoder weights checked against
fp32 per compiled grid, the decoder at real 3-D M-RoPE positions; planted disagreements fail."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from PIL import Image

from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.compiler.precision import PrecisionSettings
from tpc.compiler.verify_precision import compare_reduced, reduced_references
from tpc.errors import ParityError
from tpc.manifest import load_artifact
from tpc.methods import get_method
from tpc.models.presets import PRESETS, build_preset
from tpc.models.qwen2_5_vl import QwenVLAdapter
from tpc.models.qwen_geometry import merged_positions
from tpc.runtimes.compiled_model import CompiledModel
from tpc.runtimes.ort import OrtGraphs

GRIDS = {"vision_12x20": [12, 20], "vision_20x12": [20, 12], "vision_16x16": [16, 16]}  # the preset's sizes


@pytest.fixture(scope="module")
def qwen_precision(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen-precision")
    configs = {
        "fp16": dict(target="onnx", precision=PrecisionSettings(dtype="fp16")),
        "int8": dict(target="ort", precision=PrecisionSettings(quantize=8)),
    }
    built = {}

    def get(name: str):
        if name not in built:
            out = root / name
            compile_model(CompileSettings(model="qwen2.5-vl-tiny", output=out, ratio=0.75, **configs[name]))
            built[name] = out
        return built[name]

    return get


@pytest.fixture(scope="module")
def references(qwen_precision):
    """The fp32 references of the fp16 artifact, as compile computes them (the preset's model is fp32)."""
    manifest = json.loads((qwen_precision("fp16") / "manifest.json").read_text())
    model, processor = build_preset(PRESETS["qwen2.5-vl-tiny"])
    adapter = QwenVLAdapter(model, processor)
    adapter.set_grids([tuple(g) for g in manifest["grid_vision"]["grids"].values()])
    method = get_method("received")
    refs = reduced_references(adapter, method, manifest["keep"], method.parse_args({}), manifest["grid_vision"])
    return manifest, refs


def test_fp16_artifact_agrees_with_fp32_on_every_grid(qwen_precision):
    out = qwen_precision("fp16")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"]["dtype"] == "fp16" and manifest["runtime"]["dtype"] == "float16"
    assert manifest["precision"]["thresholds"] == {"min_logit_cosine": 0.999, "min_token_agreement": 0.9}
    for name in GRIDS:
        graph = manifest["graphs"][name]
        assert graph["inputs"][0]["dtype"] == "float16" and graph["inputs"][0]["shape"][1] == np.prod(GRIDS[name])
    vision = onnx.load(str(out / manifest["graphs"]["vision_16x16"]["file"]), load_external_data=False)
    big = [t for t in vision.graph.initializer if np.prod(t.dims) >= 1024 and t.name not in ("cos", "sin")]
    assert big and all(t.data_type == onnx.TensorProto.FLOAT16 for t in big)  # the rotary tables stay fp32
    v = manifest["verification"]
    assert v["mode"] == "agreement with fp32" and v["passed"]
    assert sorted((r["graph"], r["batch"]) for r in v["vision"]) == sorted((n, b) for n in GRIDS for b in (1, 2))
    assert all(r["grid"] == GRIDS[r["graph"]] and r["indices"] in ("exact", "near-tie") for r in v["vision"])
    assert v["decoder"]["passed"] and v["decoder"]["logit_cosine_min"] >= 0.999
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (168, 280, 3), dtype=np.uint8))
    result = CompiledModel.load(out).generate(["What is it?"], [picture], max_new_tokens=3)
    assert len(result.token_ids[0]) >= 1 and result.pictures[0]["grid"] == (12, 20)
    assert result.kept_indices.shape[1] == manifest["grid_vision"]["keep"]["vision_12x20"]


def test_int8_decoder_weights_leave_the_grid_graphs_in_fp32(qwen_precision):
    out = qwen_precision("int8")
    manifest = json.loads((out / "manifest.json").read_text())
    decoder = onnx.load(str(out / manifest["graphs"]["decoder"]["file"]), load_external_data=False)
    assert any(n.op_type == "MatMulNBits" for n in decoder.graph.node)
    for name in GRIDS:
        graph = onnx.load(str(out / manifest["graphs"][name]["file"]), load_external_data=False)
        assert not any(n.op_type == "MatMulNBits" for n in graph.graph.node)
    assert manifest["precision"]["quantize"]["bits"] == 8
    v = manifest["verification"]
    assert v["passed"] and all(r["indices"] == "exact" for r in v["vision"])  # fp32 vision: same kept sets
    assert v["decoder"]["token_agreement"] >= 0.75


def test_decoder_references_carry_3d_positions_of_the_kept_tokens(references):
    manifest, refs = references
    grid, keep = GRIDS["vision_16x16"], manifest["grid_vision"]["keep"]["vision_16x16"]
    for prompt in refs["decoder"]:
        ids, positions = prompt["ids"], prompt["positions"]
        assert positions.shape == (*ids.shape, 3) and prompt["image"].shape[1] == keep
        for row in range(2):
            image = np.flatnonzero(ids[row] == manifest["runtime"]["image_token_id"])
            assert len(image) == keep
            start = positions[row, image[0] - 1, 0] + 1  # the text before the image advances by one per token
            block = positions[row, image]
            full = merged_positions(grid, 2, start=start)
            kept = [int(np.flatnonzero((full == p).all(axis=1))[0]) for p in block]
            assert kept == sorted(kept) and len(set(kept)) == keep  # the kept tokens at their unpruned positions
            assert len(set(block[:, 1])) > 1 and len(set(block[:, 2])) > 1  # really 2-D over the grid
            after = positions[row, image[-1] + 1]
            assert (after == start + max(grid) // 2).all()  # text resumes past the grid's extent


class _Planted:
    """The artifact's graphs with one planted fault."""

    def __init__(self, graphs, vision: str | None = None, flat_positions: bool = False):
        self.graphs, self.vision_graph, self.flat_positions = graphs, vision, flat_positions

    def __getattr__(self, name):
        return getattr(self.graphs, name)

    def run_graph(self, name, feeds):
        features, kept = self.graphs.run_graph(name, feeds)
        if name == self.vision_graph:  # another token set: the first K tokens, whatever the scores
            kept = np.broadcast_to(np.arange(kept.shape[1]), kept.shape).copy()
        return features, kept

    def decoder(self, embeds, mask, positions, past):
        if self.flat_positions:  # 1-D positions on every axis: M-RoPE without the image's grid
            positions = np.repeat(positions[..., :1], 3, axis=-1)
        return self.graphs.decoder(embeds, mask, positions, past)


def test_planted_disagreements_fail_with_their_numbers(qwen_precision, references):
    manifest, refs = references
    graphs = OrtGraphs.from_artifact(load_artifact(qwen_precision("fp16")))
    thresholds = manifest["precision"]["thresholds"]
    assert compare_reduced(graphs, refs, thresholds)["passed"]
    with pytest.raises(ParityError, match=r"vision vision_20x12 b1: indices mismatch") as failed:
        compare_reduced(_Planted(graphs, vision="vision_20x12"), refs, thresholds)
    assert "vision_16x16" not in str(failed.value)
    with pytest.raises(ParityError, match=r"decoder: logit cosine min .* \(needs >= 0.999\)"):
        compare_reduced(_Planted(graphs, flat_positions=True), refs, thresholds)
