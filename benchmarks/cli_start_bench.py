"""Start-up time of the `tpc` command line: fresh processes, wall clock, medians.

    python benchmarks/cli_start_bench.py --runs 5

Times (median of --runs fresh processes each, after one untimed warm-up that fills the
OS file cache): `tpc --help`; the argument errors `tpc run ... --max-new-tokens 0` and
`tpc compile llava-tiny --keep 0`; a full `tpc run` of a llava-tiny artifact (ratio 0.89,
ONNX Runtime, CPU), whose TTFT inside the process is reported next to its wall time;
and, for reference, what the former `tpc run` paid before its first token: importing
torch and transformers and loading the processor with `AutoProcessor`. Reuses
build/llava-tiny (`make demo`) when it is an ort artifact of llava-tiny, else compiles one
into --out. Writes the "CLI start-up" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, sh, write_section

MARK = "<!-- cli-start -->"
DEMO = ROOT / "examples" / "assets" / "demo.png"
PROMPT = "What is in the picture?"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")


def tpc(*args: str) -> list[str]:
    """The installed ``tpc`` console script next to this interpreter (``python -m tpc.cli`` without one)."""
    script = Path(sys.executable).with_name("tpc")
    return [str(script), *args] if script.is_file() else [sys.executable, "-m", "tpc.cli", *args]


def artifact(out: Path) -> Path:
    """An ort artifact of llava-tiny: build/llava-tiny when it is one, else compiled into ``out``."""
    for candidate in (ROOT / "build" / "llava-tiny", out / "llava-tiny"):
        manifest = candidate / "manifest.json"
        if manifest.is_file():
            data = json.loads(manifest.read_text())
            if data.get("target") == "ort" and (data.get("model") or {}).get("id") == "llava-tiny":
                return candidate
    target = out / "llava-tiny"
    out.mkdir(parents=True, exist_ok=True)
    sh(tpc("compile", "llava-tiny", "--ratio", "0.89", "--target", "ort", "-o", str(target), "--force", "-q"))
    return target


def timed(cmd: list[str], expect: int, runs: int) -> dict:
    """Wall seconds of ``runs`` fresh processes (after one untimed warm-up); the last one's output."""
    walls, done = [], None
    for index in range(runs + 1):
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=ENV)
        wall = time.perf_counter() - start
        if done.returncode != expect:
            raise SystemExit(f"{' '.join(cmd)}: exit {done.returncode}, expected {expect}\n{done.stderr[-2000:]}")
        if index:
            walls.append(wall)
    return {
        "median_s": statistics.median(walls),
        "min_s": min(walls),
        "max_s": max(walls),
        "exit": expect,
        "stdout": done.stdout,
        "stderr": done.stderr,
    }


def measure(art: Path, runs: int, scratch: Path) -> list[dict]:
    former = (
        "import torch, transformers\n"
        "from transformers import AutoProcessor\n"
        f"AutoProcessor.from_pretrained({str(art / 'processor')!r})\n"
    )
    rows = [
        ("`tpc --help`", "usage text", tpc("--help"), 0),
        (
            "`tpc run ART --prompt x --max-new-tokens 0`",
            "argument error (exit 2)",
            tpc("run", str(art), "--prompt", "x", "--max-new-tokens", "0"),
            2,
        ),
        (
            "`tpc compile llava-tiny --keep 0`",
            "argument error (exit 2)",
            tpc("compile", "llava-tiny", "--keep", "0", "-o", str(scratch / "never-written")),
            2,
        ),
        (
            f'`tpc run ART --image demo.png --prompt "{PROMPT}" --max-new-tokens 8 --json`',
            "cold run: load the artifact, 8 tokens",
            tpc("run", str(art), "--image", str(DEMO), "--prompt", PROMPT, "--max-new-tokens", "8", "--json"),
            0,
        ),
        (
            "former path's extra start-up (reference)",
            "`import torch, transformers` + `AutoProcessor.from_pretrained(ART/processor)`",
            [sys.executable, "-c", former],
            0,
        ),
    ]
    results = []
    for label, what, cmd, expect in rows:
        print("+", " ".join(cmd), flush=True)
        result = timed(cmd, expect, runs)
        result.update(label=label, what=what)
        if expect == 2:
            result["message"] = result["stderr"].strip().splitlines()[-1]
        if "--json" in cmd:
            result["ttft_ms"] = json.loads(result["stdout"])["timings_ms"]["ttft_ms"]
        print(json.dumps({k: v for k, v in result.items() if k not in ("stdout", "stderr")}), flush=True)
        results.append(result)
    return results


def machine() -> str:
    from tpc.profiling.device import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write(path: Path, results: list[dict], runs: int, art: Path) -> None:
    manifest = json.loads((art / "manifest.json").read_text())
    run = next(r for r in results if "ttft_ms" in r)
    errors = [r for r in results if r["exit"] == 2]
    lines = [
        "## CLI start-up",
        "",
        f"`python benchmarks/cli_start_bench.py --runs {runs}`: wall time of fresh `tpc` processes, median of "
        f"{runs} after one untimed warm-up (the interpreter starts cold, the OS file cache is warm), on "
        f"{machine()}. The artifact is `{art.relative_to(ROOT) if art.is_relative_to(ROOT) else art}` "
        f"(llava-tiny, {manifest['visual_tokens']['after']} of {manifest['visual_tokens']['before']} visual tokens, "
        "ONNX Runtime CPU), so the "
        "run measures start-up rather than the model: "
        f"its TTFT inside the process is {run['ttft_ms']:.0f} ms of {run['median_s']:.2f} s wall. "
        "`tpc run` on an ONNX Runtime artifact imports neither torch nor transformers (the processor is read "
        "with tokenizers, jinja2 and PIL, identically), and checks its arguments before loading anything. "
        "The last row is what the former `tpc run` paid on top, before its first token and before "
        "checking its arguments (torch and transformers imports and `AutoProcessor`).",
        "",
        "| command | what | median s | min s | max s |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['label']} | {r['what']} | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['max_s']:.2f} |")
    lines += ["", "Argument errors print one line and exit 2:", ""]
    lines += [f"* {r['label']}: `{r['message']}`" for r in errors]
    write_section(path, MARK, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "cli-start")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    art = artifact(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    results = measure(art, args.runs, args.out)
    (args.out / "results.json").write_text(
        json.dumps([{k: v for k, v in r.items() if k not in ("stdout", "stderr")} for r in results], indent=2)
    )
    write(args.output, results, args.runs, art)
    print(args.output.read_text()[args.output.read_text().index(MARK) :])


if __name__ == "__main__":
    main()
