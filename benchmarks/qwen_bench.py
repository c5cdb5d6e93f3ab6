"""Qwen2.5-VL in BENCHMARKS.md: Hugging Face baselines and tpc, measured in one run.

    python benchmarks/qwen_bench.py --runs 5

``qwen2.5-vl-bench`` (the 3 B model's ViT, a ~0.5 B Qwen2 decoder, random weights), one 672x448
picture (grid 48x32: 1,536 patches, 384 merged tokens), a short question, --new-tokens greedy tokens.
Rows, measured in this run: (a) Hugging Face transformers unpruned (PyTorch, SDPA); (b) the same model
with the received-attention selection applied eagerly (``tpc.models.qwen_reference.hf_pruned_generate``:
HF's tower, the eager attention matrix, the 3-D positions of the unpruned prompt); (c) tpc + ONNX
Runtime at ratio 0; (d) tpc at ratio 0.75 (96 tokens). (c) and (d) run interleaved, medians. The ideal
TTFT speed-up comes from (c)'s and (d)'s stage times: (vision + prefill at 384) / (vision + prefill at 96).

The score's cost: the 672x448 vision graph exported for ``received`` and for ``random`` (a fixed
seeded pick, no score) at the same budget, run interleaved on the same patches; the difference of the
medians over ``random``'s median (target: under 3 %).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from common import ROOT, sh, write_section

MARK = "<!-- qwen -->"
MODEL = "qwen2.5-vl-bench"
SIZE = (672, 448)
RATIO = 0.75
QUESTION = "What is written on the sign in this picture, and what colour is it?"


def hf_rows(runs: int, warmup: int, new_tokens: int) -> dict:
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    from tpc.methods import get_method
    from tpc.models import load_model
    from tpc.models.families import make_adapter
    from tpc.models.qwen_reference import hf_inputs, hf_pruned_generate
    from tpc.profiling.profiler import synthetic_image

    loaded = load_model(MODEL)
    adapter = make_adapter(loaded.model, loaded.processor)
    image = synthetic_image(SIZE, 0)
    method = get_method("received")

    class Clock(LogitsProcessor):
        def __init__(self):
            self.stamps: list[float] = []

        def __call__(self, input_ids, scores):
            self.stamps.append(time.perf_counter())
            return scores

    def hf_once() -> tuple[float, float]:
        clock = Clock()
        start = time.perf_counter()
        inputs = hf_inputs(loaded.processor, image, QUESTION)
        with torch.no_grad():
            loaded.model.generate(
                **inputs,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                logits_processor=LogitsProcessorList([clock]),
            )
        s = clock.stamps
        return (s[0] - start) * 1e3, (len(s) - 1) / (s[-1] - s[0])

    def eager_once() -> tuple[float, float]:
        stamps: list[float] = []
        start = time.perf_counter()
        hf_pruned_generate(adapter, method, {}, image, QUESTION, new_tokens, RATIO, on_token=stamps.append)
        return (stamps[0] - start) * 1e3, (len(stamps) - 1) / (stamps[-1] - stamps[0])

    rows = {}
    for name, once in (("hf", hf_once), ("hf-method", eager_once)):
        ttft, rate = [], []
        for index in range(warmup + runs):
            first, decode = once()
            if index >= warmup:
                ttft.append(first)
                rate.append(decode)
        rows[name] = {"ttft_ms": statistics.median(ttft), "decode_tokens_per_s": statistics.median(rate)}
    return rows


def tpc_rows(arts: dict[float, Path], runs: int, warmup: int, new_tokens: int) -> dict:
    from tpc.profiling.profiler import synthetic_image
    from tpc.profiling.timer import StageTimer
    from tpc.runtimes.compiled_model import CompiledModel
    from tpc.runtimes.sampling import Sampler

    image = synthetic_image(SIZE, 0)
    models = {ratio: CompiledModel.load(art) for ratio, art in arts.items()}
    samples: dict[float, dict[str, list[float]]] = {ratio: {} for ratio in arts}
    info = {}
    for index in range(warmup + runs):
        for ratio, model in models.items():  # interleaved: both see the same machine state
            timer = StageTimer()
            result = model.generate(
                [QUESTION], [image], max_new_tokens=new_tokens, sampler=Sampler(), timer=timer, stop_at_eos=False
            )
            info[ratio] = {
                "image_tokens": result.image_tokens[0],
                "picture": result.pictures[0],
                "prompt_text_tokens": int(len(model.encoder.encode(QUESTION, [1])) - 1),
            }
            if index < warmup:
                continue
            values = dict(result.timings_ms, decode_tokens_per_s=result.decode_tokens_per_s)
            for key, value in values.items():
                samples[ratio].setdefault(key, []).append(value)
    return {ratio: {**{k: statistics.median(v) for k, v in samples[ratio].items()}, **info[ratio]} for ratio in arts}


def score_cost(out: Path, runs: int, warmup: int) -> dict:
    """Median vision-graph time at 672x448 with the received score vs a scoreless selection."""
    import onnxruntime as ort
    import torch

    from tpc.compiler.grid_vision import export_grid_vision, prepare
    from tpc.compiler.settings import CompileSettings
    from tpc.methods import get_method
    from tpc.models import load_model
    from tpc.models.families import make_adapter

    loaded = load_model(MODEL)
    adapter = make_adapter(loaded.model, loaded.processor)
    paths = {}
    for name in ("received", "random"):
        target = out / f"score-{name}"
        target.mkdir(parents=True, exist_ok=True)
        settings = CompileSettings(model=MODEL, output=target, method=name, ratio=RATIO, image_sizes=[SIZE])
        method = get_method(name)
        prepare(settings, adapter, method, False)
        exported, _, _ = export_grid_vision(adapter, method, method.parse_args({}), settings, target, torch.float32)
        paths[name] = next(iter(exported.values()))
    del loaded, adapter
    gc.collect()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sessions = {n: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for n, p in paths.items()}
    length = (SIZE[0] // 14) * (SIZE[1] // 14)
    patches = np.random.default_rng(0).standard_normal((1, length, 1176)).astype(np.float32)
    times: dict[str, list[float]] = {n: [] for n in sessions}
    for index in range(warmup + runs):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {"pixel_patches": patches})
            if index >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def render(args, hf: dict, tpc: dict, cost: dict) -> list[str]:
    base, pruned = tpc[0.0], tpc[RATIO]
    v0, p0, p1 = base["vision_ms"], base["prefill_ms"], pruned["prefill_ms"]
    ideal = (v0 + p0) / (v0 + p1)
    actual = base["ttft_ms"] / pruned["ttft_ms"]
    score = (cost["received"] - cost["random"]) / cost["random"]
    picture = pruned["picture"]
    rows = [
        ("Hugging Face, unpruned (PyTorch)", hf["hf"]["ttft_ms"], None, None, hf["hf"]["decode_tokens_per_s"]),
        (
            "Hugging Face + received, eager",
            hf["hf-method"]["ttft_ms"],
            None,
            None,
            hf["hf-method"]["decode_tokens_per_s"],
        ),
        ("tpc ratio 0 (ONNX Runtime)", base["ttft_ms"], v0, p0, base["decode_tokens_per_s"]),
        (f"tpc ratio {RATIO} (received)", pruned["ttft_ms"], pruned["vision_ms"], p1, pruned["decode_tokens_per_s"]),
    ]
    lines = [
        "## Qwen2.5-VL (dynamic resolution, window attention, M-RoPE)",
        "",
        f"`python benchmarks/qwen_bench.py --runs {args.runs}`: `{MODEL}` (Qwen2.5-VL-3B's ViT: 32 blocks, "
        "1280 wide, window attention with 4 full blocks; a ~0.5 B Qwen2 decoder with M-RoPE; random weights), "
        f"one {SIZE[0]}x{SIZE[1]} picture (grid {picture['grid'][0]}x{picture['grid'][1]}: "
        f"{base['image_tokens']} merged tokens), a {len(QUESTION.split())}-word question, {args.new_tokens} "
        f"greedy tokens, CPU, medians of {args.runs} runs after {args.warmup} warm-up; tpc rows interleaved"
        + (" (Hugging Face and score rows: the previous full run, `--reuse`)." if args.reuse else "."),
        "",
        "| row | visual tokens | TTFT ms | vision ms | prefill ms | decode tok/s |",
        "|---|---|---|---|---|---|",
    ]
    tokens = [base["image_tokens"], pruned["image_tokens"], base["image_tokens"], pruned["image_tokens"]]
    for (label, ttft, vision, prefill, decode), count in zip(rows, tokens, strict=True):
        cells = [f"{ttft:.0f}", "" if vision is None else f"{vision:.0f}", "" if prefill is None else f"{prefill:.0f}"]
        lines.append(f"| {label} | {count} | {' | '.join(cells)} | {decode:.1f} |")
    lines += [
        "",
        f"- prefill at ratio {RATIO}: **{p1 / p0:.2f}x** of ratio 0 (target at most 0.35x), with the chat "
        f"template's default system prompt and the question: {base['prompt_text_tokens']} text tokens beside the "
        "picture's (the bench preset's tokenizer has one token per common English word, built in code, as a "
        "real Qwen vocabulary has; the byte-level tokenizer of the tiny presets would make them about 4x longer)",
        f"- TTFT speed-up {actual:.2f}x against the ideal bound {ideal:.2f}x from this run's stage times: "
        f"**{100 * actual / ideal:.0f} %** of ideal (target at least 95 %)",
        f"- received-attention score: vision graph {cost['received']:.0f} ms vs {cost['random']:.0f} ms with a "
        f"scoreless selection: **{100 * score:.1f} %** (target under 3 %)",
        f"- decode at ratio {RATIO}: {pruned['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f}x ratio 0",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "qwen")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--reuse", action="store_true", help="keep the last run's Hugging Face and score rows")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    arts = {}
    for ratio in (0.0, RATIO):  # every compile first, so that none overlaps a measurement
        art = out / f"{MODEL}-r{ratio}"
        if not (art / "manifest.json").exists():
            size = f"{SIZE[0]}x{SIZE[1]}"
            sh(
                [sys.executable, "-m", "tpc.cli", "compile", MODEL, "--ratio", str(ratio), "--image-sizes", size]
                + ["-o", str(art), "--force", "-q"]
            )
        arts[ratio] = art
    if args.reuse:  # re-render with the PyTorch and score rows of the last run (the tpc rows are measured again)
        last = json.loads((out / "results.json").read_text())
        hf, cost = last["hf"], last["cost"]
    else:
        cost = score_cost(out, args.runs * 2, args.warmup)
        hf = hf_rows(args.runs, args.warmup, args.new_tokens)
        gc.collect()  # the PyTorch model goes before the artifacts load
    tpc = tpc_rows(arts, args.runs, args.warmup, args.new_tokens)
    results = {"hf": hf, "tpc": {str(k): v for k, v in tpc.items()}, "cost": cost}
    (out / "results.json").write_text(json.dumps(results))
    write_section(args.output, MARK, render(args, hf, tpc, cost))


if __name__ == "__main__":
    main()
