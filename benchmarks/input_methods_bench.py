"""Selection at the LLM input (DART, CDPruner) against FasterVLM at the same kept-token count.

    python benchmarks/input_methods_bench.py --runs 5

Three artifacts of --model keep --keep of its visual tokens: FasterVLM before the
projector (`--method fastervlm --keep K`), DART and CDPruner on the assembled input
embeddings after `embed` (`--method dart|cdpruner --ratio R`: every visual token reaches
the LLM input and the span keeps ceil(N*(1-R)) = K; R is the shortest such ratio). All are
compiled first, so no compile overlaps a measurement (reused under --out unless --force).

Latency: the three are loaded in one process and run interleaved (the order rotates each
round) on one synthetic picture and a 64-token prompt, --new-tokens greedy tokens with EOS
ignored, medians of --runs after --warmup. The selection cost is `select_input_ms`, the
`select_input` graph's own time inside TTFT.

Prompt dependence: on --pictures synthetic pictures x 3 prompt pairs, the overlap
|A & B| / |A| of the kept sets of the two prompts on the same picture (each its own
generation of one token), averaged. FasterVLM scores with the vision tower's [CLS]
attention, so it should be 1.0; it is measured like the others.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

from common import ROOT, profile_parser, sh, write_section

MARK = "<!-- input-methods -->"
METHODS = ("fastervlm", "dart", "cdpruner")
STAGES = ("vision_ms", "embed_ms", "select_input_ms", "prefill_ms", "ttft_ms")
PROMPT_PAIRS = (
    ("What colour is the object in the top left corner?", "How many people are standing near the bottom edge?"),
    ("Read the text written on the sign.", "Is the animal on the right side asleep?"),
    ("Describe the background of this picture.", "What is the person in the centre holding in their hands?"),
)
SELECTION_SHARE, TTFT_TOLERANCE = 0.02, 0.05  # the targets: selection < 2 % of TTFT, TTFT within 5 % of FasterVLM


def input_ratio(n: int, keep: int) -> str:
    """The shortest --ratio (at least 3 decimals) whose span quota clamp(ceil(n*(1-R)), 1, n) is ``keep``."""
    from tpc.methods.llm_input import input_keep

    for digits in range(3, 10):
        ratio = round(1 - keep / n, digits)
        if input_keep(n, ratio) == keep:
            return f"{ratio:.{digits}f}"
    raise SystemExit(f"no --ratio keeps exactly {keep} of {n} tokens")


def kept_count(manifest: dict) -> int:
    selection = manifest.get("input_selection")
    if selection:
        return max(span["keep"] for span in selection["spans"].values())
    return manifest["keep"]


def compile_artifacts(args) -> tuple[dict[str, Path], dict[str, str], int]:
    """{method: artifact}, {method: the budget flags it was compiled with}, visual tokens before selection."""
    arts, budgets, before = {}, {}, 0
    for method in METHODS:  # fastervlm first: its manifest gives the token count the input ratio needs
        budget = f"--keep {args.keep}" if method == "fastervlm" else f"--ratio {input_ratio(before, args.keep)}"
        art = args.out / f"{args.model}-{method}-k{args.keep}"
        if args.force or not (art / "manifest.json").exists():
            compile_cmd = ["tpc.cli", "compile", args.model, "--method", method, *budget.split(), "-o", str(art)]
            sh([sys.executable, "-m", *compile_cmd, "--force", "-q"])
        manifest = json.loads((art / "manifest.json").read_text())
        before = before or manifest["visual_tokens"]["before"]
        if kept_count(manifest) != args.keep:
            raise SystemExit(f"{art} keeps {kept_count(manifest)} tokens, not {args.keep}: rerun with --force")
        arts[method], budgets[method] = art, budget
    return arts, budgets, before


def kept_set(result, row: int) -> set[int]:
    """The visual tokens row ``row`` kept: the LLM-input selection's span rows, else the vision graph's."""
    kept = result.input_kept_indices if result.input_kept_indices is not None else result.kept_indices
    return {int(i) for i in kept[row] if i >= 0}


def measure(models: dict, image, prompt: str, args) -> dict[str, dict[str, float]]:
    from tpc.profiling.timer import StageTimer

    samples = {name: {k: [] for k in (*STAGES, "decode_tokens_per_s", "rows")} for name in models}
    names = list(models)
    for index in range(args.warmup + args.runs):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            result = models[name].generate(
                [prompt], [image], max_new_tokens=args.new_tokens, timer=StageTimer(), stop_at_eos=False
            )
            if index >= args.warmup:
                for stage in STAGES:
                    samples[name][stage].append(result.timings_ms.get(stage, 0.0))
                samples[name]["decode_tokens_per_s"].append(result.decode_tokens_per_s)
                samples[name]["rows"].append(len(kept_set(result, 0)))
    return {name: {k: statistics.median(v) for k, v in metrics.items()} for name, metrics in samples.items()}


def overlaps(model, size: int, pictures: int) -> list[float]:
    from tpc.profiling.profiler import synthetic_image

    values = []
    for seed in range(pictures):
        image = synthetic_image(size, seed)
        for a, b in PROMPT_PAIRS:
            first, second = (kept_set(model.generate([p], [image], max_new_tokens=1), 0) for p in (a, b))
            values.append(len(first & second) / len(first))
    return values


def selector_form(art: Path) -> str:
    """How the artifact's `select_input` graphs run the selection: the manifest's record, else read from the graph."""
    import onnx

    manifest = json.loads((art / "manifest.json").read_text())
    selection = manifest["input_selection"]
    if selection.get("form"):
        return f"{selection['form']} (recorded in the manifest)"
    forms = []
    for span in selection["spans"].values():
        graph = onnx.load(str(art / manifest["graphs"][span["graph"]]["file"]), load_external_data=False)
        ops = [node.op_type for node in graph.graph.node]
        form = "an ONNX Loop" if "Loop" in ops else f"unrolled ({span['keep']} greedy steps, no Loop node)"
        forms.append(f"`{span['graph']}`: {form}, {len(ops)} nodes (read from the graph; the manifest has no form)")
    return "; ".join(forms)


def main() -> None:
    parser = profile_parser(__doc__, ROOT / "build" / "bench" / "input-methods", runs=5, new_tokens=16)
    parser.add_argument("--keep", type=int, default=64, help="visual tokens every method keeps")
    parser.add_argument("--pictures", type=int, default=4, help="synthetic pictures for the overlap table")
    parser.add_argument("--force", action="store_true", help="recompile the artifacts under --out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    arts, budgets, before = compile_artifacts(args)

    from tpc.profiling.profiler import synthetic_image, synthetic_prompt
    from tpc.runtimes.compiled_model import CompiledModel

    models = {name: CompiledModel.load(art, check_hashes=False) for name, art in arts.items()}
    runtime = models["fastervlm"].runtime
    prompt = synthetic_prompt(models["fastervlm"].encoder.tokenizer, 64)
    stats = measure(models, synthetic_image(runtime["image_size"], 0), prompt, args)
    overlap = {}
    for name in METHODS:  # one model at a time, each released after its overlaps
        overlap[name] = overlaps(models.pop(name), runtime["image_size"], args.pictures)
    manifests = {name: json.loads((art / "manifest.json").read_text()) for name, art in arts.items()}
    result = {"stats": stats, "overlap": overlap, "form": selector_form(arts["cdpruner"]), "budgets": budgets}
    (args.out / "input_methods.json").write_text(json.dumps(result, indent=2))
    lines = render(args, result, manifests, before, runtime)
    write_section(args.output, MARK, lines)
    print("\n".join(lines))


def render(args, result: dict, manifests: dict, before: int, runtime: dict) -> list[str]:
    from tpc.profiling.device import cpu_model

    stats, overlap, budgets = result["stats"], result["overlap"], result["budgets"]
    base = stats["fastervlm"]["ttft_ms"]
    share = {m: stats[m]["select_input_ms"] / stats[m]["ttft_ms"] for m in METHODS[1:]}
    vs_base = {m: stats[m]["ttft_ms"] / base - 1 for m in METHODS}
    mean = {m: statistics.mean(v) for m, v in overlap.items()}
    params = {m: manifests[m]["input_selection"]["parameters"] for m in METHODS[1:]}
    size = runtime["image_size"]
    cmd = f"python benchmarks/input_methods_bench.py --runs {args.runs} --warmup {args.warmup} "
    cmd += f"--new-tokens {args.new_tokens}" + (f" --model {args.model}" if args.model != "llava-bench" else "")
    compiles = ", ".join(f"`tpc compile {args.model} --method {m} {budgets[m]}`" for m in METHODS)
    where = {
        "fastervlm": "[CLS] attention, before the projector",
        "dart": "LLM input: duplication to image + prompt pivots",
        "cdpruner": "LLM input: prompt-conditioned DPP",
    }
    lines = [
        f"## Selection at the LLM input: DART and CDPruner against FasterVLM ({args.keep} kept tokens)",
        "",
        f"`{cmd}` on `{args.model}` (random weights, {runtime['image_size']} px pictures, {before} visual tokens "
        f"from the vision tower, {runtime['num_layers']}-layer decoder of width {runtime['hidden_size']}), ONNX "
        f"Runtime CPU fp32 on {cpu_model()}, {os.cpu_count()} cores. Artifacts: {compiles} (each keeps "
        f"{args.keep} of {before}). The three are loaded in one process and run interleaved (the order rotates "
        f"every round) on one synthetic {size}x{size} picture (seed 0) and a 64-token prompt, {args.new_tokens} "
        f"new tokens (greedy, EOS ignored), medians of {args.runs} runs after {args.warmup} warm-up. TTFT = "
        "preprocessing + vision + embedding + selection at the LLM input + prefill.",
        "",
        "| method | selects by | image rows into the decoder | vision ms | embed ms | selection ms | prefill ms | "
        "TTFT ms | selection / TTFT | TTFT vs FasterVLM | decode tok/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in METHODS:
        s = stats[m]
        select = "in vision" if m == "fastervlm" else f"{s['select_input_ms']:.1f}"
        fraction, versus = ("-", "-") if m == "fastervlm" else (f"{100 * share[m]:.2f} %", f"{100 * vs_base[m]:+.1f} %")
        lines.append(
            f"| {m} | {where[m]} | {s['rows']:.0f} | {s['vision_ms']:.0f} | {s['embed_ms']:.0f} | {select} | "
            f"{s['prefill_ms']:.0f} | {s['ttft_ms']:.0f} | {fraction} | {versus} | "
            f"{s['decode_tokens_per_s']:.2f} |"
        )
    describe = {m: ", ".join(f"{k}={v}" for k, v in params[m].items()) for m in METHODS[1:]}
    lines += [
        "",
        f"CDPruner ({describe['cdpruner']}) graph form: {result['form']}; its selection costs "
        f"{stats['cdpruner']['select_input_ms']:.1f} ms. DART ({describe['dart']}): "
        f"{stats['dart']['select_input_ms']:.1f} ms.",
        "",
        "### The kept set follows the prompt",
        "",
        f"{args.pictures} synthetic {size}x{size} pictures (seeds 0-{args.pictures - 1}) x {len(PROMPT_PAIRS)} "
        "prompt pairs, each prompt its own generation of one token on the same picture. Overlap = "
        "|A & B| / |A| of the two kept sets (1.0: the same tokens whatever the prompt). Random weights: the "
        "table shows whether selection reads the prompt, not how well it chooses.",
        "",
        "| method | mean overlap | min | max | pairs with identical sets |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in METHODS:
        v = overlap[m]
        same = sum(x == 1.0 for x in v)
        lines.append(f"| {m} | {mean[m]:.3f} | {min(v):.3f} | {max(v):.3f} | {same}/{len(v)} |")
    lines += ["", "Prompt pairs: " + "; ".join(f'"{a}" / "{b}"' for a, b in PROMPT_PAIRS) + ".", "", "Targets:", ""]
    verdict = {True: "met", False: "not met"}
    for m in METHODS[1:]:
        lines.append(
            f"* {m} selection < {100 * SELECTION_SHARE:.0f} % of TTFT: {100 * share[m]:.2f} % "
            f"({verdict[share[m] < SELECTION_SHARE]})"
        )
    for m in METHODS[1:]:
        lines.append(
            f"* {m} TTFT within {100 * TTFT_TOLERANCE:.0f} % of FasterVLM's at {args.keep} kept: "
            f"{100 * vs_base[m]:+.1f} % ({verdict[abs(vs_base[m]) <= TTFT_TOLERANCE]})"
        )
    lines.append(
        f"* FasterVLM's kept set independent of the prompt (mean overlap 1.0): {mean['fastervlm']:.3f} "
        f"({verdict[mean['fastervlm'] == 1.0]})"
    )
    for m in METHODS[1:]:
        lines.append(
            f"* {m}'s kept set depends on the prompt (mean overlap < 1): {mean[m]:.3f} ({verdict[mean[m] < 1]})"
        )
    return lines


if __name__ == "__main__":
    main()
