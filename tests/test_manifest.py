import json
import shutil

import pytest

from tpc.errors import ArtifactError
from tpc.manifest import load_artifact


@pytest.fixture()
def copy(artifacts, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(artifacts(0.89, "ort"), dst)
    return dst


def test_intact_artifact_loads(copy):
    assert load_artifact(copy).manifest["keep"] == 64


def test_tampered_file_is_refused(copy):
    with open(copy / "vision.ort.onnx.data", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(ArtifactError, match="vision.ort.onnx.data was modified"):
        load_artifact(copy)


def test_missing_file_is_refused(copy):
    (copy / "processor" / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="incomplete artifact, processor/tokenizer.json is missing"):
        load_artifact(copy)


def test_corrupt_or_missing_manifest(copy, tmp_path):
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt manifest"):
        load_artifact(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="not a tpc artifact"):
        load_artifact(copy)
    with pytest.raises(ArtifactError, match="no such artifact"):
        load_artifact(tmp_path / "nowhere")


def test_schema_mismatch(copy):
    m = json.loads((copy / "manifest.json").read_text())
    m["schema_version"] = 999
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="schema 999"):
        load_artifact(copy)
