"""In-LLM pruning on llava-bench: FastV and PyramidDrop against tpc at ratio 0, in one run.

    python benchmarks/llm_bench.py            # part of `make bench`

Compiles (cached in build/bench/llm) tpc ratio 0, fastv K=2 R=0.5 and R=0.75, pdrop with
its default stages, and composed artifacts (pre-LLM budget + FastV; in-ViT selection +
FastV, with the pre-LLM-only artifact of the same budget); profiles each in its own
process with the same prompt (64 text tokens + the image), the same number of new tokens
and runs; writes the "In-LLM pruning" section of BENCHMARKS.md with medians and the
ratios to tpc ratio 0 measured in this same run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common import baseline_artifact, profile_parser, sh, write_section

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- in-llm -->"

CONFIGS = [
    ("tpc ratio 0", "r0", None),  # the shared baseline artifact (baseline.py)
    ("fastv K=2 R=0.5", "fastv-k2-r0.5", ["--method", "fastv", "--method-arg", "layer=2", "--ratio", "0.5"]),
    ("fastv K=2 R=0.75", "fastv-k2-r0.75", ["--method", "fastv", "--method-arg", "layer=2", "--ratio", "0.75"]),
    ("pdrop (default stages)", "pdrop", ["--method", "pdrop"]),
    (
        "fastervlm 0.5 + fastv K=2 R=0.5",
        "fastervlm0.5-fastv",
        ["--ratio", "0.5", "--llm-method", "fastv", "--llm-method-arg", "layer=2", "--llm-ratio", "0.5"],
    ),
    ("fastervlm keep 64 (pre-LLM only)", "fastervlm-k64", ["--keep", "64"]),
    (
        "in-ViT J=4 keep 64 + fastv K=2 R=0.5",
        "invit4-k64-fastv",
        [
            "--keep",
            "64",
            "--select-layer",
            "4",
            "--llm-method",
            "fastv",
            "--llm-method-arg",
            "layer=2",
            "--llm-ratio",
            "0.5",
        ],
    ),
]


def main() -> None:
    parser = profile_parser(__doc__, ROOT / "build" / "bench" / "llm")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []

    def artifact(name: str, flags) -> Path:
        return baseline_artifact(args.model) if flags is None else args.out / f"{args.model}-{name}"

    for _label, name, flags in CONFIGS:  # every compile first, so that no compile overlaps a measurement
        art = artifact(name, flags)
        if not (art / "manifest.json").exists():
            sh([sys.executable, "-m", "tpc.cli", "compile", args.model, *flags, "-o", str(art), "--force", "-q"])
    for label, name, flags in CONFIGS:
        art = artifact(name, flags)
        path = args.out / f"{name}.json"
        sh(
            [
                sys.executable,
                "-m",
                "tpc.cli",
                "profile",
                str(art),
                "--runs",
                str(args.runs),
                "--warmup",
                str(args.warmup),
                "--prompt-tokens",
                "64",
                "--new-tokens",
                str(args.new_tokens),
                "--json",
                str(path),
                "-q",
            ]
        )
        doc = json.loads(path.read_text())
        manifest = json.loads((art / "manifest.json").read_text())
        llm = manifest.get("llm_pruning")
        stages = ", ".join(f"L{s['layer']}:{s['keep']}" for s in llm["stages"]) if llm else "-"
        m = doc["metrics"]
        rows.append(
            {
                "label": label,
                "llm_tokens": manifest["keep"],
                "stages": stages,
                "ttft_ms": m["ttft_ms"]["p50"],
                "prefill_ms": m["prefill_ms"]["p50"],
                "vision_ms": m["vision_ms"]["p50"],
                "decode_tok_s": m["decode_tokens_per_s"]["p50"],
                "kv_mb": doc["kv_cache_bytes"] / 2**20,
            }
        )
    base = rows[0]
    lines = [
        "## In-LLM pruning (FastV, PyramidDrop)",
        "",
        f"`python benchmarks/llm_bench.py` on `{args.model}` (14-layer Llama decoder): every row profiled in "
        f"its own process in this run, 64-token prompt + image, {args.new_tokens} new tokens, medians of "
        f"{args.runs} runs after {args.warmup} warm-up. Ratios are to tpc ratio 0 of the same run. "
        "pdrop's default stages are the quarter points of the decoder (layers 4, 7, 10 of 14; the paper's "
        "8/16/24 of 32) keeping 50/25/12.5 % of the image tokens.",
        "",
        "| configuration | image tokens into LLM | kept at stages | prefill ms | prefill vs r0 | TTFT ms | "
        "TTFT vs r0 | decode tok/s | decode vs r0 | KV cache MB |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['llm_tokens']} | {r['stages']} | {r['prefill_ms']:.0f} | "
            f"{r['prefill_ms'] / base['prefill_ms']:.3f}x | {r['ttft_ms']:.0f} | "
            f"{r['ttft_ms'] / base['ttft_ms']:.3f}x | {r['decode_tok_s']:.1f} | "
            f"{r['decode_tok_s'] / base['decode_tok_s']:.2f}x | {r['kv_mb']:.1f} |"
        )
    (args.out / "llm.json").write_text(json.dumps(rows, indent=2))
    write_section(args.output, MARK, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
