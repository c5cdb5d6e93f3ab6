"""tpc at ratio 0 on a model, compiled once into build/bench/baseline and profiled per run.

The benchmarks that quote a ratio to "tpc ratio 0" profile this artifact in their own
run, next to the rows they compare with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE_DIR = ROOT / "build" / "bench" / "baseline"


def sh(cmd):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def baseline_artifact(model: str) -> Path:
    art = BASELINE_DIR / f"{model}-r0"
    if not (art / "manifest.json").exists():
        BASELINE_DIR.mkdir(parents=True, exist_ok=True)
        sh([sys.executable, "-m", "tpc.cli", "compile", model, "--ratio", "0", "-o", str(art), "--force", "-q"])
    return art


def profile(art: Path, out: Path, runs: int, warmup: int = 1, new_tokens: int = 8) -> dict:
    sh([sys.executable, "-m", "tpc.cli", "profile", str(art), "--runs", str(runs), "--warmup", str(warmup),
        "--prompt-tokens", "64", "--new-tokens", str(new_tokens), "--json", str(out), "-q"])
    return json.loads(out.read_text())
