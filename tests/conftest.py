"""Shared fixtures: the tiny preset and compiled tiny artifacts (built once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from tpc.compiler.pipeline import CompileSettings, compile_model  # noqa: E402
from tpc.compiler.precision import PrecisionSettings  # noqa: E402
from tpc.models.llava import LlavaAdapter  # noqa: E402
from tpc.models.presets import PRESETS, build_preset  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "examples" / "assets"


@pytest.fixture(scope="session")
def tiny():
    """(model, processor) of llava-tiny."""
    return build_preset(PRESETS["llava-tiny"])


@pytest.fixture(scope="session")
def tiny_adapter(tiny):
    return LlavaAdapter(*tiny)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    """Compile llava-tiny lazily, once per (ratio, target) per session."""
    root = tmp_path_factory.mktemp("artifacts")
    built: dict[tuple, Path] = {}

    def get(ratio: float = 0.89, target: str = "ort", keep: int | None = None) -> Path:
        key = (ratio, target, keep)
        if key not in built:
            out = root / f"tiny-{ratio}-{target}-{keep}"
            built[key] = compile_model(
                CompileSettings(model="llava-tiny", output=out, ratio=ratio, keep=keep, target=target)
            )
        return built[key]

    return get


@pytest.fixture(scope="session")
def demo_image():
    from PIL import Image

    path = ASSETS / "demo.png"
    return Image.open(path).convert("RGB")


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``tpc`` in-process; returns (exit code, stdout, stderr)."""
    from tpc.cli import main

    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


FP32 = PrecisionSettings(dtype="fp32")
LLM_CONFIGS = {
    # FastV at decoder layer 2 of 4, removing 75 % of the image tokens; target trt (portable
    # graphs + plan; run with ONNX Runtime here), fp32 graphs (trt's default is fp16): exact parity
    "fastv": dict(
        method="fastv", method_args={"layer": "2"}, ratio=0.75, target="trt", build_engines=False, precision=FP32
    ),
    # PyramidDrop with three stages
    "pdrop": dict(method="pdrop", method_args={"layers": "1,2,3", "keep": "0.5,0.25,0.125"}),
    # a pre-LLM budget followed by FastV
    "fastervlm+fastv": dict(
        method="fastervlm", ratio=0.5, llm_method="fastv", llm_method_args={"layer": "1"}, llm_ratio=0.5
    ),
    # bucketed pre-LLM budgets followed by FastV: one selector per stage and bucket
    "buckets+fastv": dict(
        method="fastervlm",
        buckets=[32, 64],
        llm_method="fastv",
        llm_method_args={"layer": "1"},
        llm_ratio=0.5,
        target="trt",
        build_engines=False,
        precision=FP32,
    ),
}


@pytest.fixture(scope="session")
def llm_artifacts(tmp_path_factory):
    """llava-tiny compiled with in-LLM pruning, lazily, once per configuration."""
    root = tmp_path_factory.mktemp("llm-artifacts")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = compile_model(CompileSettings(model="llava-tiny", output=root / name, **LLM_CONFIGS[name]))
        return built[name]

    return get


@pytest.fixture
def readonly_dir(tmp_path):
    """A real read-only directory: a read-only tmpfs mount as root, a 0555 directory otherwise."""
    import subprocess

    path = tmp_path / "readonly"
    path.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tpc-test-ro", str(path)], capture_output=True
        )
        if mounted.returncode != 0:
            pytest.skip("running as root and cannot mount a read-only tmpfs")
        try:
            yield path
        finally:
            subprocess.run(["umount", str(path)], capture_output=True)
        return
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)
