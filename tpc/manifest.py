"""The artifact manifest: what was compiled, how, from what, and the hash of every file.

``manifest.json`` sits at the root of every artifact. ``load_artifact`` refuses an
artifact whose files are missing or differ from the hashes recorded at compile time.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tpc.errors import ArtifactError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
_HASH_CHUNK = 1 << 22


def package_versions() -> dict[str, str | None]:
    import tpc

    versions: dict[str, str | None] = {"tpc": tpc.__version__, "python": platform.python_version()}
    for dist in ("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except the manifest, by relative path."""
    return {
        path.relative_to(root).as_posix(): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    }


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    manifest = dict(manifest, schema_version=SCHEMA_VERSION, files=hash_tree(root))
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")


@dataclass
class Artifact:
    root: Path
    manifest: dict[str, Any]

    def graph_path(self, name: str) -> Path:
        return self.root / self.manifest["graphs"][name]["file"]

    @property
    def runtime(self) -> dict[str, Any]:
        return self.manifest["runtime"]

    @property
    def target(self) -> str:
        return self.manifest["target"]


def load_artifact(path: str | Path, check_hashes: bool = True) -> Artifact:
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"{path}: no such artifact directory (create one with `tpc compile`)")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ArtifactError(f"{path}: not a tpc artifact (no {MANIFEST_NAME})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{manifest_path}: corrupt manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        found = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{path}: manifest schema {found!r} is not {SCHEMA_VERSION}; recompile the artifact")
    for key in ("files", "graphs", "runtime", "target"):
        if key not in manifest:
            raise ArtifactError(f"{manifest_path}: corrupt manifest (no {key!r})")
    if check_hashes:
        verify_files(root, manifest["files"])
    return Artifact(root, manifest)


def verify_files(root: Path, expected: dict[str, str]) -> None:
    for rel, digest in expected.items():
        file = root / rel
        if not file.is_file():
            raise ArtifactError(f"{root}: incomplete artifact, {rel} is missing")
        if sha256_file(file) != digest:
            raise ArtifactError(f"{root}: {rel} was modified after compile (sha256 mismatch); recompile")
