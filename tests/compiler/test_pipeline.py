import json
import os
import stat

import onnx
import pytest

from tpc.compiler import graphs as G
from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.errors import ExportError, UsageError
from tpc.manifest import SCHEMA_VERSION, sha256_file


def test_manifest_records_everything(artifacts):
    root = artifacts(0.89, "ort")
    m = json.loads((root / "manifest.json").read_text())
    assert m["schema_version"] == SCHEMA_VERSION
    for pkg in ("tpc", "torch", "transformers", "onnx", "onnxruntime"):
        assert m["versions"][pkg]
    assert m["model"]["id"] == "llava-tiny" and m["model"]["revision"]
    assert m["method"]["name"] == "fastervlm" and m["ratio"] == 0.89 and m["keep"] == 64
    assert m["visual_tokens"] == {"before": 576, "after": 64}
    passes = {p["name"]: p["modified"] for p in m["passes"]}
    assert list(passes) == [
        "remove_dead_vision_layers",
        "expose_cls_attention",
        "expose_received_attention",
        "expose_feature_values",
        "select_in_vit",
        "insert_token_selection",
    ]
    # fastervlm needs no keys nor received attention, and selects at the feature layer unless --select-layer
    assert passes == {
        "remove_dead_vision_layers": True,
        "expose_cls_attention": True,
        "expose_received_attention": False,
        "expose_feature_values": False,
        "select_in_vit": False,
        "insert_token_selection": True,
    }
    assert m["verification"]["passed"] is True
    assert m["session"]["offline_optimization"] == "extended"
    for rel, digest in m["files"].items():
        assert sha256_file(root / rel) == digest
    vision = m["graphs"]["vision"]
    assert [i["name"] for i in vision["inputs"]] == ["pixel_values"]
    assert vision["inputs"][0]["shape"] == ["batch", 3, 336, 336]
    assert {o["name"]: o["shape"] for o in vision["outputs"]} == {
        "image_features": ["batch", 64, 64],
        "kept_indices": ["batch", 64],
    }
    assert {o["name"]: o["dtype"] for o in vision["outputs"]} == {"image_features": "float32", "kept_indices": "int64"}


def test_onnx_target_is_portable_and_tensorrt_friendly(artifacts):
    root = artifacts(0.89, "onnx")
    m = json.loads((root / "manifest.json").read_text())
    assert set(m["graphs"]) == set(G.GRAPH_NAMES)
    vision = onnx.load(str(root / m["graphs"]["vision"]["file"]), load_external_data=False)
    ops = [n.op_type for n in vision.graph.node]
    assert "NonZero" not in ops and ops.count("TopK") == 2
    domains = {n.domain for n in vision.graph.node}
    assert domains <= {"", "ai.onnx"}, domains  # no ORT contrib ops in the portable target
    constant_names = {i.name for i in vision.graph.initializer}
    constant_names |= {o for n in vision.graph.node if n.op_type == "Constant" for o in n.output}
    topk_k = [n.input[1] for n in vision.graph.node if n.op_type == "TopK"]
    assert all(k in constant_names for k in topk_k), "TopK K must be a constant"
    decoder = m["graphs"]["decoder"]
    names = [i["name"] for i in decoder["inputs"]]
    assert names[:3] == ["inputs_embeds", "attention_mask", "position_ids"] and names[3] == "past_key_0"
    assert decoder["inputs"][3]["shape"] == ["batch", 2, "past_seq", 16]
    assert decoder["outputs"][0] == {"name": "logits", "shape": ["batch", 320], "dtype": "float32"}


def test_one_decoder_graph_and_no_duplicated_weights(artifacts):
    root = artifacts(0.89, "ort")
    data = sorted(p.name for p in root.glob("*.data"))
    assert data == ["decoder.ort.onnx.data", "embed.ort.onnx.data", "vision.ort.onnx.data"]


def test_existing_artifact_needs_force(artifacts, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    with pytest.raises(UsageError, match="--force"):
        compile_model(CompileSettings(model="llava-tiny", output=out, ratio=0.5))


def test_force_never_replaces_a_directory_that_is_not_an_artifact(tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "userfile.txt").write_text("precious")
    with pytest.raises(UsageError, match="not a tpc artifact"):
        compile_model(CompileSettings(model="llava-tiny", output=out, keep=8, force=True, verify=False))
    assert (out / "userfile.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]  # no staging left behind


def test_a_file_in_place_of_the_output_is_refused(tmp_path):
    out = tmp_path / "file"
    out.write_text("mine")
    with pytest.raises(UsageError, match="not a directory"):
        compile_model(CompileSettings(model="llava-tiny", output=out, keep=8, force=True, verify=False))
    assert out.read_text() == "mine"


def test_an_empty_directory_is_used_and_the_artifact_follows_the_umask(tmp_path):
    out = tmp_path / "empty"
    out.mkdir(mode=0o755)
    old = os.umask(0o022)
    try:
        compile_model(CompileSettings(model="llava-tiny", output=out, keep=8, target="onnx", verify=False))
    finally:
        os.umask(old)
    assert (out / "manifest.json").is_file()
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o044 == 0o044 for p in out.rglob("*"))  # group/other read
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_force_on_an_artifact_keeps_the_umask_mode(tmp_path):
    out = tmp_path / "art"
    old = os.umask(0o027)
    try:
        compile_model(CompileSettings(model="llava-tiny", output=out, keep=8, target="onnx", verify=False))
        compile_model(CompileSettings(model="llava-tiny", output=out, keep=9, target="onnx", verify=False, force=True))
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750


def test_unwritable_output_fails_before_loading(readonly_dir, monkeypatch):
    import tpc.compiler.pipeline as pipeline

    monkeypatch.setattr(pipeline, "_build", lambda *a, **k: pytest.fail("built despite an unwritable output"))
    with pytest.raises(UsageError, match="cannot write"):
        compile_model(CompileSettings(model="llava-tiny", output=readonly_dir / "out", keep=8))


def test_failure_leaves_no_partial_directory(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise ExportError("planted failure")

    monkeypatch.setattr(G, "export_decoder", fail)
    out = tmp_path / "never"
    with pytest.raises(ExportError, match="planted"):
        compile_model(CompileSettings(model="llava-tiny", output=out, ratio=0.89, verify=False))
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_atomically(artifacts, tmp_path):
    out = tmp_path / "again"
    compile_model(CompileSettings(model="llava-tiny", output=out, keep=10, target="onnx", verify=False))
    compile_model(CompileSettings(model="llava-tiny", output=out, keep=20, target="onnx", verify=False, force=True))
    assert json.loads((out / "manifest.json").read_text())["keep"] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]


def test_offline_optimisation_failure_is_an_export_error(tmp_path):
    from tpc.errors import ExportError
    from tpc.runtimes.ort import optimize_offline

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    with pytest.raises(ExportError, match="could not optimise broken.onnx"):
        optimize_offline(broken, tmp_path / "out.onnx")


def test_vtc_cls_start_layer_past_the_feature_layer_is_refused(tmp_path):
    settings = CompileSettings(
        model="llava-tiny", output=tmp_path / "v", method="vtc-cls", method_args={"start_layer": "16"}, keep=8
    )
    with pytest.raises(UsageError, match="start_layer=16 is past this ViT's feature layer 1"):
        compile_model(settings)
    assert list(tmp_path.iterdir()) == []


def test_vtc_cls_default_start_layer_records_what_was_used(tmp_path):
    out = compile_model(
        CompileSettings(model="llava-tiny", output=tmp_path / "v", method="vtc-cls", keep=8, target="onnx")
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"]["parameters"]["start_layer"] == 1
    assert any("default start_layer=16 becomes 1" in note for note in manifest["notes"])


def test_no_budget_compiles_unpruned_and_says_so(artifacts):
    manifest = json.loads((artifacts(0.0, "ort").joinpath("manifest.json")).read_text())
    assert manifest["visual_tokens"] == {"before": 576, "after": 576}
    assert manifest["notes"] == []  # an explicit --ratio 0 needs no note
