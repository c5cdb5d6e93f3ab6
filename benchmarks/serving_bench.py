"""Serving under load: `tpc serve` measured with `tpc loadtest`, next to `tpc profile`.

    python benchmarks/serving_bench.py                                   # llava-bench at 0.889: 200 requests
    python benchmarks/serving_bench.py --model llava-tiny --requests 16 --baseline-requests 8 --output /tmp/b.md

The model is compiled at --ratio (ONNX Runtime, CPU) once into --out. Every request sends
the same synthetic 336x336 picture (written to --out) and prompt, streams, and asks for
--max-tokens tokens. Runs, each against a fresh `tpc serve` process on 127.0.0.1 warmed
up by --concurrency requests first:

1. `tpc profile` of the artifact on that picture and prompt: the in-process TTFT (p50);
2. one request at a time through HTTP (`--max-batch 1`, concurrency 1, --single-requests):
   the TTFT the server adds to (1);
3. `--max-batch 1`, --concurrency clients, --baseline-requests requests;
4. `--max-batch 8`, --concurrency clients, --requests requests: errors, server RSS growth
   between the request at the middle of the run and its end, and throughput over (3).

Writes the "Serving" section of BENCHMARKS.md (--output) and every report to --out.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from common import ROOT, profile_parser, sh, write_section

from tpc.serving.loadtest import synthetic_picture

MARK = "<!-- serving -->"
PROMPT = "What is in the picture?"


def tpc(*args: str) -> list[str]:
    return [sys.executable, "-m", "tpc.cli", *args]


@contextlib.contextmanager
def server(art: Path, max_batch: int, log: Path):
    """`tpc serve ART --port 0 --max-batch N` in its own process; yields its URL, stops it with SIGINT."""
    process = subprocess.Popen(
        tpc("serve", str(art), "--port", "0", "--max-batch", str(max_batch), "--queue-size", "256"),
        stdout=subprocess.DEVNULL,  # uvicorn's access log
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    lines: list[str] = []
    found = None
    try:
        for line in process.stderr:
            lines.append(line)
            found = re.search(r" on (http://\S+?:\d+)", line)
            if found:
                break
        if not found:
            raise SystemExit("tpc serve did not start:\n" + "".join(lines))
        drain = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
        drain.start()
        yield found.group(1)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.write_text("".join(lines))


def loadtest(url: str, out: Path, requests: int, concurrency: int, image: Path, max_tokens: int) -> dict:
    args = ["loadtest", url, "--requests", str(requests), "--concurrency", str(concurrency)]
    args += ["--image", str(image), "--prompt", PROMPT, "--max-tokens", str(max_tokens), "--json", str(out), "-q"]
    sh(tpc(*args))
    return json.loads(out.read_text())


def measured(art: Path, out: Path, name: str, max_batch: int, requests: int, concurrency: int, args) -> dict:
    """A fresh server, ``concurrency`` warm-up requests, then the measured load test."""
    with server(art, max_batch, out / f"{name}.log") as url:
        loadtest(url, out / f"{name}-warmup.json", concurrency, concurrency, args.picture, args.max_tokens)
        return loadtest(url, out / f"{name}.json", requests, concurrency, args.picture, args.max_tokens)


def stat(report: dict, metric: str, key: str) -> float:
    return float(report["metrics"].get(metric, {}).get(key, float("nan")))


def row(label: str, report: dict) -> str:
    memory = {key: float(value) for key, value in report["server"].items() if not isinstance(value, list)}
    half, after = memory.get("rss_half_mb", float("nan")), memory.get("rss_after_mb", float("nan"))
    growth = memory.get("rss_growth_second_half_pct", float("nan"))
    return (
        f"| {label} | {report['requests_sent']} | {report['errors']} | {report['requests_per_s']:.3f} | "
        f"{report['generated_tokens_per_s']:.1f} | {stat(report, 'ttft_ms', 'p50'):.0f} | "
        f"{stat(report, 'ttft_ms', 'p99'):.0f} | {stat(report, 'e2e_ms', 'p50'):.0f} | "
        f"{stat(report, 'e2e_ms', 'p99'):.0f} | {half:.0f} -> {after:.0f} ({growth:+.2f} %) |"
    )


def main() -> None:
    parser = profile_parser(__doc__, ROOT / "build" / "bench" / "serving", runs=5, new_tokens=32)
    parser.add_argument("--ratio", type=float, default=0.889)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--baseline-requests", type=int, default=64, help="requests of the --max-batch 1 run")
    parser.add_argument("--single-requests", type=int, default=10, help="one-at-a-time requests (TTFT overhead)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    art = out / f"{args.model}-r{args.ratio}"
    if not (art / "manifest.json").exists():
        sh(tpc("compile", args.model, "--ratio", str(args.ratio), "--target", "ort", "-o", str(art), "--force", "-q"))
    args.picture = out / "picture.png"
    synthetic_picture().save(args.picture)

    profile_json = out / "profile.json"
    profile_args = ["profile", str(art), "--image", str(args.picture), "--prompt", PROMPT]
    profile_args += ["--runs", str(args.runs), "--warmup", str(args.warmup), "--new-tokens", str(args.max_tokens)]
    sh(tpc(*profile_args, "--json", str(profile_json), "-q"))
    profiled = stat(json.loads(profile_json.read_text()), "ttft_ms", "p50")

    single = measured(art, out, "single", 1, args.single_requests, 1, args)
    batch1 = measured(art, out, "batch1", 1, args.baseline_requests, args.concurrency, args)
    batch8 = measured(art, out, "batch8", 8, args.requests, args.concurrency, args)

    http_ttft = stat(single, "ttft_ms", "p50")
    overhead = 100 * (http_ttft / profiled - 1)
    speedup = batch8["requests_per_s"] / batch1["requests_per_s"] if batch1["requests_per_s"] else float("nan")
    growth = batch8["server"].get("rss_growth_second_half_pct", float("nan"))
    checks = [
        ("zero errors at --max-batch 8", batch8["errors"] == 0, f"{batch8['errors']} errors"),
        ("server RSS growth over the second half < 5 %", growth < 5, f"{growth:+.2f} %"),
        ("throughput --max-batch 8 >= 1.5x --max-batch 1", speedup >= 1.5, f"{speedup:.2f}x"),
        ("HTTP TTFT p50 within 10 % of tpc profile", abs(overhead) <= 10, f"{overhead:+.1f} %"),
    ]
    lines = [
        "## Serving: `tpc serve` under `tpc loadtest`",
        "",
        f"`python benchmarks/serving_bench.py --model {args.model} --requests {args.requests}` "
        f"(ratio {args.ratio}, ONNX Runtime CPU): every request streams one synthetic 336x336 picture and "
        f'"{PROMPT}", {args.max_tokens} new tokens; each run is a fresh `tpc serve` process on 127.0.0.1 '
        f"after {args.concurrency} warm-up requests. TTFT is the time to the first streamed token at the client; "
        "RSS is the server's `process_resident_memory_bytes` at the middle and at the end of the run.",
        "",
        "| run | requests | errors | req/s | gen tok/s | TTFT p50 ms | TTFT p99 ms | e2e p50 ms | e2e p99 ms "
        "| server RSS MB (second half) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        row("one at a time, `--max-batch 1`", single),
        row(f"concurrency {args.concurrency}, `--max-batch 1`", batch1),
        row(f"concurrency {args.concurrency}, `--max-batch 8`", batch8),
        "",
        f"`tpc profile` TTFT p50 for the same picture and prompt: {profiled:.0f} ms; through HTTP, one request at a "
        f"time: {http_ttft:.0f} ms ({overhead:+.1f} %). Throughput at `--max-batch 8` over `--max-batch 1`: "
        f"{speedup:.2f}x.",
        "",
        *[f"* {name}: {value} ({'met' if ok else '**not met**'})" for name, ok, value in checks],
    ]
    write_section(args.output, MARK, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
