"""Method library benchmark: selection cost, per-method latency at 64 kept tokens, bucket overhead.

    python benchmarks/methods_bench.py --model llava-bench       # part of `make bench`

Every method is compiled once as a bucketed artifact, whose vision is split into the
encoder, one selector graph per bucket and the projector: the selector's own time is
the selection cost, measured directly. Writes build/bench/methods.json and the
"Methods" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from common import sh, write_section

ROOT = Path(__file__).resolve().parents[1]
METHODS = [
    ("fastervlm", [], "32,64,128,192"),
    ("vtc-cls", [], "64"),
    ("visionzip", [], "64"),
    ("divprune", [], "64"),
    ("uniform", [], "64"),
    ("pool", [], "64"),
    ("random", [], "64"),
    ("cls-mass", ["mass=0.9"], "32,64,128,192"),
]
MARK = "<!-- methods -->"


def selection_cost(artifact: Path, keep: int, repeats: int) -> dict:
    from tpc.manifest import load_artifact
    from tpc.runtimes.ort import OrtGraphs

    graphs = OrtGraphs.from_artifact(load_artifact(artifact, check_hashes=False))
    info = json.loads((artifact / "manifest.json").read_text())["buckets"]
    pixels = np.random.default_rng(0).standard_normal((1, 3, 336, 336)).astype(np.float32)
    names = info["encoder_outputs"]

    def timed(fn):
        fn()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            samples.append((time.perf_counter() - start) * 1e3)
        return statistics.median(samples), out

    encoder_ms, encoded = timed(lambda: graphs.run_graph("vision_encoder", {"pixel_values": pixels}))
    feeds = {n: v for n, v in zip(names, encoded, strict=True) if n != "adaptive_keep"}
    select_ms, _ = timed(lambda: graphs.run_graph(f"select_k{keep}", feeds))
    return {"encoder_ms": encoder_ms, "select_ms": select_ms, "select_share": select_ms / encoder_ms}


def profile(artifact: Path, out: Path, args, keep: int | None = None) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "tpc.cli",
        "profile",
        str(artifact),
        "--runs",
        str(args.runs),
        "--warmup",
        "1",
        "--prompt-tokens",
        "64",
        "--new-tokens",
        str(args.new_tokens),
        "--json",
        str(out),
        "-q",
    ]
    if keep is not None:
        cmd += ["--keep", str(keep)]
    sh(cmd)
    return json.loads(out.read_text())


def p50(doc, metric):
    return doc["metrics"][metric]["p50"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llava-bench")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "methods")
    parser.add_argument(
        "--fixed",
        type=Path,
        default=ROOT / "build" / "bench" / "artifacts",
        help="fixed-K FasterVLM artifacts from run_bench.py, for the bucket comparison",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for method, margs, buckets in METHODS:
        art = args.out / f"{args.model}-{method}"
        if not (art / "manifest.json").exists():
            cmd = [
                sys.executable,
                "-m",
                "tpc.cli",
                "compile",
                args.model,
                "--method",
                method,
                "--buckets",
                buckets,
                "-o",
                str(art),
                "--force",
                "-q",
            ]
            for pair in margs:
                cmd += ["--method-arg", pair]
            sh(cmd)
        adaptive = method == "cls-mass"
        doc = profile(art, args.out / f"{method}.json", args, None if adaptive else 64)
        cost = selection_cost(art, 64, 7)
        rows.append(
            {
                "method": method,
                "args": margs,
                "buckets": buckets,
                **cost,
                "vision_ms": p50(doc, "vision_ms"),
                "ttft_ms": p50(doc, "ttft_ms"),
                "decode_tokens_per_s": p50(doc, "decode_tokens_per_s"),
                "histogram": doc["buckets"]["histogram"] if adaptive else None,
            }
        )
    comparisons = []
    fastervlm = args.out / f"{args.model}-fastervlm"
    for fixed in sorted(args.fixed.glob(f"{args.model}-fastervlm-r*")):
        keep = json.loads((fixed / "manifest.json").read_text())["keep"]
        if keep not in (32, 64, 128, 192):
            continue
        a = profile(fixed, args.out / f"fixed-{keep}.json", args)
        b = profile(fastervlm, args.out / f"bucket-{keep}.json", args, keep)
        c = profile(fixed, args.out / f"fixed-{keep}-again.json", args)  # bracket the bucketed run
        fixed_ttft = statistics.median([p50(a, "ttft_ms"), p50(c, "ttft_ms")])
        comparisons.append(
            {
                "keep": keep,
                "fixed_ttft_ms": fixed_ttft,
                "bucketed_ttft_ms": p50(b, "ttft_ms"),
                "fixed_vision_ms": statistics.median([p50(a, "vision_ms"), p50(c, "vision_ms")]),
                "bucketed_vision_ms": p50(b, "vision_ms"),
            }
        )
    (args.out / "methods.json").write_text(json.dumps({"rows": rows, "buckets": comparisons}, indent=2))
    section = render(rows, comparisons, args)
    write_section(args.output, MARK, section.splitlines())
    print(section)


def render(rows, comparisons, args) -> str:
    lines = [
        "## Methods (64 kept tokens)",
        "",
        f"`python benchmarks/methods_bench.py --model {args.model}` (part of `make bench`): each method compiled "
        "as a bucketed artifact; selection cost = the selector graph's own time against the vision encoder's "
        f"(medians of 7); TTFT and decode with a 64-token prompt and {args.new_tokens} new tokens, "
        f"medians of {args.runs} runs. cls-mass picks its bucket per image (histogram of buckets used).",
        "",
        "| method | selection ms | encoder ms | selection / encoder | vision + selection ms | TTFT ms | decode tok/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = r["method"] + (f" ({', '.join(r['args'])})" if r["args"] else "")
        if r["histogram"]:
            name += " buckets " + ", ".join(f"{k}:{v}" for k, v in r["histogram"].items() if v)
        lines.append(
            f"| {name} | {r['select_ms']:.2f} | {r['encoder_ms']:.0f} | {100 * r['select_share']:.2f} % | "
            f"{r['vision_ms']:.0f} | {r['ttft_ms']:.0f} | {r['decode_tokens_per_s']:.2f} |"
        )
    if comparisons:
        lines += [
            "",
            "### Bucketed against fixed-K artifacts (FasterVLM)",
            "",
            "One artifact with buckets 32/64/128/192 against the fixed artifact of the same K (fixed measured "
            "before and after the bucketed run, median taken).",
            "",
            "| K | fixed TTFT ms | bucketed TTFT ms | difference | fixed vision ms | bucketed vision ms |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for c in comparisons:
            diff = c["bucketed_ttft_ms"] / c["fixed_ttft_ms"] - 1
            lines.append(
                f"| {c['keep']} | {c['fixed_ttft_ms']:.0f} | {c['bucketed_ttft_ms']:.0f} | {100 * diff:+.1f} % "
                f"| {c['fixed_vision_ms']:.0f} | {c['bucketed_vision_ms']:.0f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
