"""Model families in BENCHMARKS.md: a multi-crop family's HF baselines and tpc, measured in one run.

    python benchmarks/families_bench.py --model llava-next-bench --runs 3
    python benchmarks/families_bench.py --model llava-onevision-bench --runs 3

Rows, each in its own process, one wide picture (672x1344: 5 crops, 2,880 visual tokens
from the vision tower on llava-next-bench), a 64-token prompt, --new-tokens greedy tokens:
(a) Hugging Face transformers unpruned (PyTorch, SDPA); (b) the same model fed the family's
default method's per-crop selection (FasterVLM for LLaVA-NeXT, received attention for
LLaVA-OneVision) computed eagerly in PyTorch (the adapter's reference); (c) tpc + ONNX
Runtime at ratio 0; (d) tpc at ratio 0.889. The ideal TTFT speed-up is computed from (c)'s
and (d)'s stage times of this run, as for LLaVA-1.5. Each model has its own section.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from common import ROOT, profile, profile_parser, sh, write_section

MARKS = {"llava-next-bench": "<!-- families -->", "llava-onevision-bench": "<!-- families-onevision -->"}
PICTURE = "672x1344"


def hf_row(model_name: str, mode: str, method: str, runs: int, warmup: int, new_tokens: int, out: Path) -> None:
    import torch

    from tpc.methods import METHODS
    from tpc.methods.budget import keep_count
    from tpc.models import load_model
    from tpc.models.families import make_adapter
    from tpc.profiling.profiler import parse_image_size, peak_memory_mb, synthetic_image, synthetic_prompt
    from tpc.runtimes.prompting import PromptEncoder

    loaded = load_model(model_name)
    model, processor = loaded.model, loaded.processor
    adapter = make_adapter(model, processor)
    image = synthetic_image(parse_image_size(PICTURE), 0)
    prompt = synthetic_prompt(processor.tokenizer, 64)
    tc = model.config.text_config
    pad = tc.pad_token_id if tc.pad_token_id is not None else 0
    keep = keep_count(adapter.vision.num_patches, 0.889)

    from transformers import LogitsProcessor, LogitsProcessorList

    class Clock(LogitsProcessor):
        """Timestamps each generated token: the first is TTFT, the rest time the decode steps."""

        def __init__(self):
            self.stamps: list[float] = []

        def __call__(self, input_ids, scores):
            self.stamps.append(time.perf_counter())
            return scores

    def run(tokens: int) -> tuple[float, float]:
        clock = Clock()
        kwargs = dict(
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=pad,
            logits_processor=LogitsProcessorList([clock]),
        )
        start = time.perf_counter()
        with torch.no_grad():
            if mode == "hf":
                conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
                text = processor.apply_chat_template(conversation, add_generation_prompt=True)
                inputs = processor(images=[image], text=[text], return_tensors="pt")
                model.generate(**inputs, **kwargs)
            else:
                from transformers.modeling_outputs import BaseModelOutputWithPooling

                rows, _ = adapter.reference_rows(image, METHODS.get(method), keep, {})
                encoder = PromptEncoder(processor, tc_image, keep, tc.max_position_embeddings, pad)
                ids = torch.from_numpy(encoder.tokens([prompt], [rows.shape[0]]).input_ids)
                model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=[rows])},
                    **kwargs,
                )
        stamps = clock.stamps
        ttft = (stamps[0] - start) * 1e3
        decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
        return ttft, decode

    tc_image = model.config.image_token_id
    ttft, decode = [], []
    for index in range(warmup + runs):
        first, rate = run(new_tokens)  # one generate: TTFT and the decode rate from per-token timestamps
        if index >= warmup:
            ttft.append(first)
            decode.append(rate)
    out.write_text(
        json.dumps(
            {
                "ttft_ms": statistics.median(ttft),
                "decode_tokens_per_s": statistics.median(decode),
                "peak_memory_mb": peak_memory_mb(),
            }
        )
    )


def p50(doc: dict, metric: str) -> float:
    return float(doc["metrics"].get(metric, {}).get("p50", 0.0))


def main() -> None:
    parser = profile_parser(__doc__, ROOT / "build" / "bench" / "families", runs=3, new_tokens=16)
    parser.set_defaults(model="llava-next-bench")
    parser.add_argument("--hf-mode", choices=["hf", "hf-method"], default=None, help=argparse_suppress())
    parser.add_argument("--method", default=None, help=argparse_suppress())
    parser.add_argument("--reuse-tpc", action="store_true", help="re-render with the tpc profiles of the last run")
    args = parser.parse_args()
    if args.model not in MARKS:
        parser.error(f"--model: one of {', '.join(MARKS)}")
    out = args.out
    if args.hf_mode:
        hf_row(
            args.model, args.hf_mode, args.method, args.runs, args.warmup, args.new_tokens, out / f"{args.hf_mode}.json"
        )
        return
    out.mkdir(parents=True, exist_ok=True)
    arts = {}
    for ratio in (0.0, 0.889):  # every compile first, so that none overlaps a measurement
        art = out / f"{args.model}-r{ratio}"
        if not (art / "manifest.json").exists():
            sh(
                [
                    sys.executable,
                    "-m",
                    "tpc.cli",
                    "compile",
                    args.model,
                    "--ratio",
                    str(ratio),
                    "-o",
                    str(art),
                    "--force",
                    "-q",
                ]
            )
        arts[ratio] = art
    common = ["--runs", str(args.runs), "--warmup", str(args.warmup), "--new-tokens", str(args.new_tokens)]
    method = json.loads((arts[0.889] / "manifest.json").read_text())["method"]["vision_method"]
    for mode in ("hf", "hf-method"):
        sh(
            [
                sys.executable,
                "benchmarks/families_bench.py",
                "--hf-mode",
                mode,
                "--model",
                args.model,
                "--out",
                str(out),
                "--method",
                method,
            ]
            + common
        )
    docs = {
        ratio: json.loads((out / f"tpc-r{ratio}.json").read_text())
        if args.reuse_tpc
        else profile(
            art, out / f"tpc-r{ratio}.json", args.runs, args.warmup, args.new_tokens, ("--image-size", PICTURE)
        )
        for ratio, art in arts.items()
    }
    hf = {mode: json.loads((out / f"{mode}.json").read_text()) for mode in ("hf", "hf-method")}
    title = json.loads((arts[0.0] / "manifest.json").read_text())["model"]["family"]
    write_section(args.output, MARKS[args.model], render(args, docs, hf, method, FAMILY_TITLES[title]))


FAMILY_TITLES = {"llava_next": "LLaVA-NeXT (anyres)", "llava_onevision": "LLaVA-OneVision (SigLIP, anyres)"}


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def render(args, docs: dict, hf: dict, method: str, title: str) -> list[str]:
    base, pruned = docs[0.0], docs[0.889]
    v0, p0 = p50(base, "vision_ms"), p50(base, "prefill_ms")
    p1 = p50(pruned, "prefill_ms")
    ideal = (v0 + p0) / (v0 + p1)  # selection cost counted as 0, vision as at ratio 0
    actual = p50(base, "ttft_ms") / p50(pruned, "ttft_ms")
    decode = p50(pruned, "decode_tokens_per_s") / p50(base, "decode_tokens_per_s")
    tokens = base["visual_tokens"]
    lines = [
        f"## Model families: {title}",
        "",
        f"`python benchmarks/families_bench.py --model {args.model} --runs {args.runs}`: one {PICTURE} picture "
        f"({tokens.get('crops_per_image', [1])[0]} crops, {tokens['before']} visual tokens from the vision tower), "
        f"a 64-token prompt, {args.new_tokens} new tokens, medians of {args.runs} runs after {args.warmup} warm-up, "
        "each row in its own process, CPU fp32. HF rows time one `generate` per run with a timestamp at every "
        "generated token (TTFT = the first, decode tok/s from the rest)."
        + (" The tpc rows are the profiles of this script's previous run (--reuse-tpc)." if args.reuse_tpc else ""),
        "",
        "| configuration | image rows into the LLM | TTFT ms | vision ms | prefill ms | decode tok/s | peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| (a) HF transformers, unpruned | {tokens['after']} | {hf['hf']['ttft_ms']:.0f} | - | - | "
        f"{hf['hf']['decode_tokens_per_s']:.2f} | {hf['hf']['peak_memory_mb']:.0f} |",
        f"| (b) HF fed {method} per crop (eager PyTorch) | {pruned['visual_tokens']['after']} | "
        f"{hf['hf-method']['ttft_ms']:.0f} | - | - | {hf['hf-method']['decode_tokens_per_s']:.2f} | "
        f"{hf['hf-method']['peak_memory_mb']:.0f} |",
    ]
    for label, doc in (
        ("(c) tpc ratio 0 (HF packing: unpad + newline)", base),
        (f"(d) tpc {method} 0.889 per crop", pruned),
    ):
        lines.append(
            f"| {label} | {doc['visual_tokens']['after']} | {p50(doc, 'ttft_ms'):.0f} | {p50(doc, 'vision_ms'):.0f} | "
            f"{p50(doc, 'prefill_ms'):.0f} | {p50(doc, 'decode_tokens_per_s'):.2f} | {doc['peak_memory_mb']:.0f} |"
        )
    lines += [
        "",
        f"TTFT speed-up of (d) over (c): {actual:.2f}x; ideal from this run's stage times "
        f"((vision + prefill at ratio 0) / (vision + pruned prefill)): {ideal:.2f}x; reached {actual / ideal:.0%} of "
        f"the ideal (target >= 95 %). Decode tok/s (d) vs (c): {decode:.2f}x.",
    ]
    return lines


if __name__ == "__main__":
    main()
