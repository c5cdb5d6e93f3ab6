"""What the benchmark scripts share: running commands, BENCHMARKS.md sections, the baseline.

The benchmarks that quote a ratio to "tpc ratio 0" profile ``baseline_artifact`` (compiled
once into build/bench/baseline) in their own run, next to the rows they compare with it.
Each script owns one section of BENCHMARKS.md, starting at its ``<!-- name -->`` mark;
``write_section`` replaces that section and keeps every other one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE_DIR = ROOT / "build" / "bench" / "baseline"


def profile_parser(doc: str | None, out: Path, runs: int = 5, new_tokens: int = 32) -> argparse.ArgumentParser:
    """The options of a script that profiles artifacts into ``out`` and writes a BENCHMARKS.md section."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llava-bench")
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=new_tokens)
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    return parser


def decoder_passes_digest() -> str:
    """A digest of the ONNX decoder passes' code and their graph view: a cached quantized artifact made by other
    passes is stale."""
    import hashlib

    digest = hashlib.sha256()
    for path in [ROOT / "tpc" / "onnx_graph.py", *sorted((ROOT / "tpc" / "passes").glob("onnx_*.py"))]:
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def sh(cmd):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def write_section(path: Path, mark: str, lines: list[str]) -> None:
    """Replace the section after ``mark`` (up to the next mark) with ``lines``; append it if new."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    before, _, after = text.partition(mark)
    rest = after.split("\n<!-- ", 1)
    tail = "\n<!-- " + rest[1] if len(rest) > 1 else ""
    path.write_text(before.rstrip() + "\n\n" + mark + "\n" + "\n".join(lines).rstrip("\n") + "\n" + tail)


def baseline_artifact(model: str) -> Path:
    art = BASELINE_DIR / f"{model}-r0"
    if not (art / "manifest.json").exists():
        BASELINE_DIR.mkdir(parents=True, exist_ok=True)
        sh([sys.executable, "-m", "tpc.cli", "compile", model, "--ratio", "0", "-o", str(art), "--force", "-q"])
    return art


def profile(art: Path, out: Path, runs: int, warmup: int = 1, new_tokens: int = 8, extra: tuple = ()) -> dict:
    sh(
        [
            sys.executable,
            "-m",
            "tpc.cli",
            "profile",
            str(art),
            "--runs",
            str(runs),
            "--warmup",
            str(warmup),
            "--prompt-tokens",
            "64",
            "--new-tokens",
            str(new_tokens),
            "--json",
            str(out),
            "-q",
            *extra,
        ]
    )
    return json.loads(out.read_text())
