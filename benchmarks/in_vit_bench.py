"""In-ViT selection on llava-bench: TTFT against the select layer at 64 kept tokens, and drift.

    python benchmarks/in_vit_bench.py --layers 4,8,12,16,22      # part of `make bench`

For each select layer J: compile (cached in build/bench/in_vit), profile TTFT/vision, and
compare with selecting at the feature layer: overlap of the kept sets and relative
L2 drift of the projected features (PyTorch references, 4 random images). Appends the
"In-ViT selection" section of BENCHMARKS.md; TTFT is also divided by tpc at ratio 0,
profiled in the same run (build/bench/baseline).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from common import baseline_artifact, profile, sh, write_section

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- in-vit -->"


def drift(model: str, layers: list[int], keep: int, images: int) -> dict[int, dict]:
    from tpc.methods import METHODS
    from tpc.methods.in_vit import in_vit_reference
    from tpc.models import load_model
    from tpc.models.llava import LlavaAdapter

    loaded = load_model(model)
    adapter = LlavaAdapter(loaded.model, loaded.processor)
    pixels = torch.randn(
        images, 3, adapter.vision.image_size, adapter.vision.image_size, generator=torch.Generator().manual_seed(0)
    )
    base_idx, base_feat, _ = METHODS.get("fastervlm").reference(adapter, pixels, keep)
    out = {}
    for layer in layers:
        idx, feat, _ = in_vit_reference(adapter, pixels, keep, layer=layer)
        overlaps, drifts = [], []
        for b in range(images):
            common = sorted(set(idx[b].tolist()) & set(base_idx[b].tolist()))
            overlaps.append(len(common) / keep)
            if common:
                pos_a = [idx[b].tolist().index(c) for c in common]
                pos_b = [base_idx[b].tolist().index(c) for c in common]
                a, c = feat[b, pos_a], base_feat[b, pos_b]
                drifts.append(float((a - c).norm() / c.norm()))
        out[layer] = {
            "overlap": sum(overlaps) / images,
            "feature_drift": sum(drifts) / len(drifts) if drifts else float("nan"),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llava-bench")
    parser.add_argument("--layers", default="4,8,12,16,22")
    parser.add_argument("--keep", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench" / "in_vit")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    layers = [int(x) for x in args.layers.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for layer in layers:  # every compile first, so that no compile overlaps a measurement
        art = args.out / f"{args.model}-J{layer}"
        if not (art / "manifest.json").exists():
            sh(
                [
                    sys.executable,
                    "-m",
                    "tpc.cli",
                    "compile",
                    args.model,
                    "--keep",
                    str(args.keep),
                    "--select-layer",
                    str(layer),
                    "-o",
                    str(art),
                    "--force",
                    "-q",
                ]
            )
    base_art = baseline_artifact(args.model)
    base_doc = profile(base_art, args.out / "r0.json", args.runs)
    for layer in layers:
        doc = profile(args.out / f"{args.model}-J{layer}", args.out / f"J{layer}.json", args.runs)
        rows.append(
            {
                "layer": layer,
                "ttft_ms": doc["metrics"]["ttft_ms"]["p50"],
                "vision_ms": doc["metrics"]["vision_ms"]["p50"],
            }
        )
    quality = drift(args.model, layers, args.keep, 4)
    base = base_doc["metrics"]["ttft_ms"]["p50"]
    lines = [
        "## In-ViT selection (FasterVLM, 64 kept tokens)",
        "",
        f"`python benchmarks/in_vit_bench.py --layers {args.layers}`: select at ViT layer J, later layers run on "
        f"[CLS] + 64 tokens; medians of {args.runs} runs (64-token prompt). Overlap and drift against selecting "
        "at the feature layer (random weights make them uninformative here; on a real checkpoint they are "
        "the figures to choose J by)." + f" TTFT ratio against tpc at ratio 0 ({base:.0f} ms TTFT, "
        f"{base_doc['metrics']['vision_ms']['p50']:.0f} ms vision) profiled in this same run.",
        "",
        "| select layer J | vision ms | TTFT ms | TTFT vs tpc ratio 0 | kept-set overlap | feature drift |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        q = quality[r["layer"]]
        ratio = f"{r['ttft_ms'] / base:.3f}x"
        lines.append(
            f"| {r['layer']} | {r['vision_ms']:.0f} | {r['ttft_ms']:.0f} | {ratio} | {q['overlap']:.2f} | "
            f"{q['feature_drift']:.3f} |"
        )
    (args.out / "in_vit.json").write_text(
        json.dumps({"rows": rows, "quality": quality, "baseline_ttft_ms": base}, indent=2)
    )
    write_section(args.output, MARK, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
