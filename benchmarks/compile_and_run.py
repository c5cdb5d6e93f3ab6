"""Compile time, peak memory, artifact size and `tpc run` TTFT per (model, ratio).

    python benchmarks/compile_and_run.py --model llava-bench --ratios 0,0.89 --out build/bench

Each compile runs in its own process (peak RSS of that process is reported); TTFT is
the median over --repeats `tpc run --json` calls, ratios interleaved so that machine
noise hits them alike. Writes a JSON report next to the artifacts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TPC = [sys.executable, "-m", "tpc.cli"]


def compile_once(model: str, ratio: float, out: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(TPC + ["compile", model, "--ratio", str(ratio), "-o", str(out), "--force", "-q"], check=True)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "compile_s": round(seconds, 1),
        "peak_rss_mb": round(max(peak_kb, before) / 1024),
        "peak_rss_is_max_so_far": peak_kb == before,
        "artifact_mb": round(size / 2**20, 1),
        "keep": manifest["keep"],
        "verification": manifest["verification"].get("passed"),
    }


def run_once(artifact: Path, image: Path, prompt: str, new_tokens: int) -> dict:
    out = subprocess.run(
        TPC
        + [
            "run",
            str(artifact),
            "--image",
            str(image),
            "--prompt",
            prompt,
            "--max-new-tokens",
            str(new_tokens),
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llava-bench")
    parser.add_argument("--ratios", default="0,0.89")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--skip-compile", action="store_true", help="reuse artifacts already in --out")
    args = parser.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]
    image = ROOT / "examples" / "assets" / "demo.png"
    prompt = "What is in the picture? Describe it."
    report = {"model": args.model, "cpu_count": os.cpu_count(), "rows": {}}
    for ratio in ratios:
        art = args.out / f"{args.model}-r{ratio}"
        row = {} if args.skip_compile else compile_once(args.model, ratio, art)
        row["artifact"] = str(art)
        report["rows"][str(ratio)] = row
        print(json.dumps({"ratio": ratio, **row}), flush=True)
    ttft: dict[str, list[float]] = {str(r): [] for r in ratios}
    for _ in range(args.repeats):
        for ratio in ratios:
            result = run_once(Path(report["rows"][str(ratio)]["artifact"]), image, prompt, args.new_tokens)
            ttft[str(ratio)].append(result["timings_ms"]["ttft_ms"])
    base = statistics.median(ttft[str(ratios[0])])
    for ratio in ratios:
        row = report["rows"][str(ratio)]
        row["ttft_ms_median"] = round(statistics.median(ttft[str(ratio)]), 1)
        row["ttft_ms_runs"] = [round(t, 1) for t in ttft[str(ratio)]]
        row["ttft_vs_first_ratio"] = round(row["ttft_ms_median"] / base, 3)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"compile_and_run-{args.model}.json"
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
