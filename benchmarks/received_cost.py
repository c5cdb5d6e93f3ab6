"""What the received-attention score costs inside LLaVA-OneVision's vision graph.

    python benchmarks/received_cost.py --model llava-onevision-bench --runs 7

The vision graph is compiled exactly as ``tpc compile`` builds it (trace, the default passes,
export) for two methods at the same budget: ``received`` (the score: one extra softmax(QKᵀ)
of the feature layer, recomputed from its own q/k, then the column mean) and ``uniform``
(a fixed grid, no score). Both graphs run in ONNX Runtime on the same crops, interleaved,
after a warm-up; the cost is the difference of the medians over the ``uniform`` median.
Writes the "received attention" section of BENCHMARKS.md (target: under 3 %).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from common import ROOT, write_section

MARK = "<!-- received-cost -->"
METHODS_COMPARED = ("received", "uniform")


def export_vision(model_name: str, ratio: float, out: Path) -> tuple[dict[str, Path], dict]:
    from tpc.compiler import graphs as G
    from tpc.compiler.trace import trace_vision
    from tpc.methods import get_method, keep_count
    from tpc.models import load_model
    from tpc.models.families import make_adapter
    from tpc.passes import DEFAULT_PASSES, PassContext, run_passes

    loaded = load_model(model_name)
    adapter = make_adapter(loaded.model, loaded.processor)
    keep = keep_count(adapter.vision.num_patches, ratio)
    paths = {}
    for name in METHODS_COMPARED:
        method = get_method(name)
        params = method.parse_args({})
        if method.resolve_params is not None:
            params, _ = method.resolve_params(adapter.vision, params, set())
        gm = trace_vision(adapter.vision_boundary(), adapter.vision.image_size)
        ctx = PassContext(layout=adapter.vision, method=method, keep=keep, params=params, select_layer=None)
        gm, _ = run_passes(gm, ctx, DEFAULT_PASSES)
        (out / name).mkdir(parents=True, exist_ok=True)
        paths[name] = G.export_vision(gm, adapter.vision, out / name)
    geometry = {
        "layers": adapter.vision.num_layers,
        "tokens": adapter.vision.num_patches,
        "image_size": adapter.vision.image_size,
        "keep": keep,
    }
    return paths, geometry


def measure(paths: dict[str, Path], image_size: int, crops: int, runs: int, warmup: int) -> dict[str, float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sessions = {
        name: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for name, p in paths.items()
    }
    pixels = np.random.default_rng(0).standard_normal((crops, 3, image_size, image_size)).astype(np.float32)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for index in range(warmup + runs):
        for name, session in sessions.items():  # interleaved: both see the same machine state
            feed = {session.get_inputs()[0].name: pixels}
            start = time.perf_counter()
            session.run(None, feed)
            if index >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llava-onevision-bench")
    parser.add_argument("--ratio", type=float, default=0.889)
    parser.add_argument("--crops", default="1,5", help="crops per vision call (comma-separated)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "received")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    paths, geometry = export_vision(args.model, args.ratio, args.out)
    rows = []
    for crops in (int(c) for c in args.crops.split(",")):
        medians = measure(paths, geometry["image_size"], crops, args.runs, args.warmup)
        cost = (medians["received"] - medians["uniform"]) / medians["uniform"]
        rows.append({"crops": crops, **{f"{k}_ms": v for k, v in medians.items()}, "cost": cost})
        print(json.dumps(rows[-1]), flush=True)
    lines = [
        "## LLaVA-OneVision: cost of the received-attention score",
        "",
        f"`python benchmarks/received_cost.py --model {args.model} --runs {args.runs}`: the vision graph "
        f"({geometry['layers']} SigLIP layers, {geometry['tokens']} tokens per {geometry['image_size']} px crop, "
        f"{geometry['keep']} kept per crop at ratio {args.ratio}) compiled as `tpc compile` builds it, once scoring "
        "with the attention each token receives at the feature layer (`received`) and once with a fixed grid "
        f"(`uniform`, no score); ONNX Runtime CPU fp32, interleaved, medians of {args.runs} runs after "
        f"{args.warmup} warm-up.",
        "",
        "| crops per call | uniform (no score) ms | received ms | score cost |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['crops']} | {r['uniform_ms']:.0f} | {r['received_ms']:.0f} | {r['cost']:+.1%} |" for r in rows]
    worst = max(r["cost"] for r in rows)
    lines += ["", f"Largest cost: {worst:+.1%} of the vision graph (target: under 3 %)."]
    write_section(args.output, MARK, lines)


if __name__ == "__main__":
    main()
