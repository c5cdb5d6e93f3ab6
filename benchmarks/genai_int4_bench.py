"""tpc's int4 decoder side by side with ONNX Runtime GenAI's own int4 CPU decoder, same Llama weights.

    python benchmarks/genai_int4_bench.py --write                   # llava-bench; writes the "genai-int4" section
    python benchmarks/genai_int4_bench.py --model llava-tiny        # quick check, prints the section only

What runs (artifacts cached in build/bench/genai-int4):

1. tpc: ``tpc compile MODEL --ratio 0.889 --quantize int4 --target ort`` with the agreement thresholds at 0
   (random weights: the check's numbers are recorded, never a refusal); the int4 artifact of
   benchmarks/precision_bench.py is reused when it was compiled with the same settings.
2. The same preset's language model and lm_head, saved as a standalone Hugging Face ``LlamaForCausalLM``
   (fp32 safetensors, the LLaVA text_config, the preset's tokenizer); its logits are checked equal to the
   LLaVA model's on the benchmark prompt before anything is built from it.
3. ONNX Runtime GenAI's model builder on that checkpoint: ``-p int4 -e cpu`` with tpc's ``--quantize`` defaults
   (block 32, symmetric, accuracy level 4 = int8 compute, round-to-nearest; the tpc artifact's manifest must
   carry the same), and the MatMulNBits nodes of both graphs read back to show it.
4. Both decoders run in two long-lived worker processes, on 2 intra-op threads each, fed the same token ids
   (a text prompt as long as the benchmark's 64 text tokens + the kept image tokens), greedy, the same number
   of new tokens with end-of-sequence suppressed on both sides; runs alternate between the two workers (the
   order swapped every round), warm-up first, medians reported.

onnxruntime-genai lives in its own virtual environment (default build/genai-venv), created on first use:
``python -m venv`` plus a ``.pth`` file that makes this environment's packages (torch, transformers, onnx,
onnxruntime) visible in it, then ``pip install --no-deps onnxruntime-genai==0.18.0``. Nothing is installed or
upgraded in this environment, and GenAI runs on the very same onnxruntime build as tpc.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from common import ROOT, decoder_passes_digest, profile_parser, write_section
from genai_workers import Worker

MARK = "<!-- genai-int4 -->"
GENAI_SPEC = "onnxruntime-genai==0.18.0"
DEFAULT_VENV = ROOT / "build" / "genai-venv"
PASSAGE = (
    "A vision-language model turns one picture into hundreds of visual tokens, and most of them are redundant. "
    "The decoder then reads the kept tokens together with the question and answers one token at a time; on a "
    "laptop processor that answer is limited by how fast the weights stream through memory. "
)


# --- preparing the two sides ---------------------------------------------------------------------


def genai_python(venv: Path) -> tuple[Path, dict]:
    """The interpreter of the GenAI environment (created on first use) and its package versions."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv}: this environment's packages via a .pth file, plus {GENAI_SPEC}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        site = Path(subprocess.check_output([str(python), "-c", purelib], text=True).strip())
        (site / "tpc-project-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", GENAI_SPEC], check=True)
    probe = "import json, onnxruntime as o, onnxruntime_genai as og; print(json.dumps([og.__version__, o.__version__]))"
    genai, ort = json.loads(subprocess.check_output([str(python), "-c", probe], text=True).strip().splitlines()[-1])
    return python, {"onnxruntime_genai": genai, "onnxruntime (GenAI side)": ort}


def tpc_artifact(args, quant: dict) -> tuple[Path, bool]:
    """The int4 artifact: precision_bench's when it matches these settings, else one compiled here."""
    wanted = {"bits": 4, **quant}

    def matches(art: Path) -> bool:
        path = art / "manifest.json"
        if not path.exists():
            return False
        m = json.loads(path.read_text())
        q = m.get("precision", {}).get("quantize") or {}
        return (
            m["model"]["id"] == args.model
            and m.get("ratio") == args.ratio
            and m["method"]["name"] == "fastervlm"
            and m["target"] == "ort"
            and m.get("precision", {}).get("dtype") == "fp32"
            and not m.get("buckets")
            and not m.get("llm_pruning")
            and all(q.get(k) == v for k, v in wanted.items())
            and made_by_these_passes(art)
        )

    def made_by_these_passes(art: Path) -> bool:  # the stamp this script or precision_bench.py wrote
        stamps = (art.with_name(art.name + ".passes"), art.with_name(art.name + ".flags"))
        return any(p.exists() and p.read_text().split()[-1:] == [decoder_passes_digest()] for p in stamps)

    shared = ROOT / "build" / "bench" / "precision" / f"{args.model}-int4"
    if matches(shared):
        return shared, True
    art = args.out / f"{args.model}-tpc-int4"
    if not matches(art):
        cmd = [sys.executable, "-m", "tpc.cli", "compile", args.model, "--ratio", str(args.ratio), "--quantize", "int4"]
        cmd += ["--quant-block-size", str(quant["block_size"]), "--quant-accuracy-level", str(quant["accuracy_level"])]
        cmd += ["--target", "ort", "--min-token-agreement", "0", "--min-logit-cosine", "0"]
        print("+", " ".join(cmd), flush=True)
        subprocess.run([*cmd, "-o", str(art), "--force", "-q"], cwd=ROOT, check=True)
        art.with_name(art.name + ".passes").write_text(decoder_passes_digest())
        os.sync()  # the fresh artifact's pages written back before anything is timed (writeback slowed a run)
    return art, False


def prompt_ids(tokenizer, length: int) -> list[int]:
    """BOS, then the passage's tokens (repeated as needed): ``length`` ids."""
    body = tokenizer(PASSAGE, add_special_tokens=False)["input_ids"]
    ids = [tokenizer.bos_token_id]
    while len(ids) < length:
        ids += body
    return ids[:length]


def llama_checkpoint(args, ckpt: Path, prompt_length: int) -> tuple[list[int], dict]:
    """Save (once) the preset's language model as a LlamaForCausalLM; return the prompt and the checkpoint's
    facts, among them its fp32 greedy tokens on the prompt (end-of-sequence suppressed, as on both sides)."""
    import torch
    import transformers

    info_path = ckpt / "extract.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else None
    llava = None
    if info is None or info.get("model") != args.model:
        from tpc.models.presets import PRESETS, build_preset

        print(f"extracting {args.model}'s language model into {ckpt}", flush=True)
        llava, processor = build_preset(PRESETS[args.model])
        text = llava.config.text_config
        if text.model_type != "llama":
            raise SystemExit(f"{args.model}: its decoder is {text.model_type}, not Llama")
        config = transformers.LlamaConfig.from_dict(text.to_dict())
        config.architectures = ["LlamaForCausalLM"]
        config.dtype = "float32"
        lm = transformers.LlamaForCausalLM(config)
        state = {"model." + k: v for k, v in llava.model.language_model.state_dict().items()}
        state["lm_head.weight"] = llava.lm_head.weight
        lm.load_state_dict(state, strict=True)
        if ckpt.exists():
            shutil.rmtree(ckpt)
        lm.save_pretrained(ckpt)
        processor.tokenizer.save_pretrained(ckpt)
        del lm
        info = {"model": args.model, "parameters": sum(v.numel() for v in state.values())}
    tokenizer = transformers.AutoTokenizer.from_pretrained(ckpt)
    ids = prompt_ids(tokenizer, prompt_length)
    lm = transformers.LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    inputs = torch.tensor([ids])
    with torch.no_grad():
        if llava is not None:  # the saved weights compute exactly what the LLaVA model's language model does
            diff = (lm(inputs).logits - llava(input_ids=inputs).logits).abs().max().item()
            info["max_abs_logit_diff_vs_llava"] = diff
            if diff > 1e-4:
                raise SystemExit(f"the extracted checkpoint differs from {args.model}'s language model: {diff}")
            info_path.write_text(json.dumps(info, indent=2))
            del llava
        n = args.new_tokens
        out = lm.generate(
            inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=n, min_new_tokens=n, do_sample=False
        )
    info["fp32_tokens"] = out[0, len(ids) :].tolist()
    info["bytes"] = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
    return ids, info


def genai_model(args, python: Path, ckpt: Path, quant: dict) -> tuple[Path, list[str]]:
    """Run GenAI's model builder once per checkpoint and settings; the threads go into genai_config.json."""
    out = args.out / f"{args.model}-genai-int4"
    extra = [
        f"block_size={quant['block_size']}",
        f"accuracy_level={quant['accuracy_level']}",
        f"is_symmetric={str(quant['symmetric']).lower()}",
        "algo_config=default",  # round-to-nearest, what tpc's DefaultWeightOnlyQuantConfig does
    ]
    cmd = [str(python), "-m", "onnxruntime_genai.models.builder", "-i", str(ckpt), "-o", str(out)]
    cmd += ["-p", "int4", "-e", "cpu", "-c", str(args.out / "builder-cache"), "--extra_options", *extra]
    stamp = {"cmd": cmd, "checkpoint_mtime": (ckpt / "model.safetensors").stat().st_mtime}
    stamp_path = out / "bench-build.json"
    if not stamp_path.exists() or json.loads(stamp_path.read_text()) != stamp:
        if out.exists():
            shutil.rmtree(out)
        print("+", " ".join(cmd), flush=True)
        log = args.out / f"{args.model}-genai-builder.log"
        with open(log, "w") as handle:
            done = subprocess.run(cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise SystemExit(f"GenAI's model builder failed (exit {done.returncode}); see {log}")
        shutil.rmtree(args.out / "builder-cache", ignore_errors=True)
        stamp_path.write_text(json.dumps(stamp, indent=2))
    config_path = out / "genai_config.json"
    config = json.loads(config_path.read_text())
    config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = args.threads
    config_path.write_text(json.dumps(config, indent=4))
    return out, cmd


def graph_facts(files: list[Path]) -> dict:
    """Bytes on disk, MatMulNBits settings and the com.microsoft (fused) operators of ONNX graphs."""
    import onnx

    facts: dict = {"bytes": 0, "matmulnbits": {}, "fused_ops": {}}
    for path in files:
        facts["bytes"] += path.stat().st_size + sum(f.stat().st_size for f in path.parent.glob(path.name + ".data"))
        model = onnx.load(str(path), load_external_data=False)
        for output in model.graph.output:
            if output.name == "logits":
                dims = output.type.tensor_type.shape.dim
                facts["logits"] = [d.dim_param or d.dim_value for d in dims]
        for node in model.graph.node:
            if node.op_type == "MatMulNBits":
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                zero_points = len(node.input) > 3 and bool(node.input[3])
                key = f"bits {attrs.get('bits')}, block {attrs.get('block_size')}, accuracy level "
                key += f"{attrs.get('accuracy_level', 0)}, {'asymmetric' if zero_points else 'symmetric'}"
                facts["matmulnbits"][key] = facts["matmulnbits"].get(key, 0) + 1
            elif node.domain == "com.microsoft":
                facts["fused_ops"][node.op_type] = facts["fused_ops"].get(node.op_type, 0) + 1
    return facts


# --- the measurement -----------------------------------------------------------------------------


def summarize(runs: list[dict]) -> dict:
    decode = [1e3 * r["steps"] / r["decode_ms"] for r in runs]
    return {
        "prefill_ms": statistics.median(r["prefill_ms"] for r in runs),
        "decode_tok_s": statistics.median(decode),
        "decode_tok_s_min": min(decode),
        "decode_tok_s_max": max(decode),
        "decode_ms_per_token": statistics.median(r["decode_ms"] / r["steps"] for r in runs),
        "runs": len(runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "deterministic": all(r["tokens"] == runs[0]["tokens"] for r in runs),
    }


def agreement(a: list[int], b: list[int], first: int) -> dict:
    prefix = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
    return {
        "common_prefix": prefix,
        "first_steps": first,
        "first_steps_equal": sum(x == y for x, y in zip(a[:first], b[:first], strict=True)),
        "positions_equal": sum(x == y for x, y in zip(a, b, strict=True)),
        "length": len(a),
    }


def measure(args, genai_dir: Path, art: Path, python: Path, ids: list[int]) -> dict:
    script = str(Path(__file__).resolve().with_name("genai_workers.py"))
    workers = {
        "genai": Worker("GenAI", [str(python), script, "genai", str(genai_dir)]),
        "tpc": Worker("tpc", [sys.executable, script, "tpc", str(art), "--threads", str(args.threads)]),
    }
    runs: dict[str, list[dict]] = {"genai": [], "tpc": []}
    try:
        for index in range(args.warmup + args.runs):
            order = ("genai", "tpc") if index % 2 == 0 else ("tpc", "genai")
            for name in order:
                time.sleep(args.pause)  # the other side's idle pool threads stop spinning first
                result = workers[name].run(ids, args.new_tokens)
                if len(result["tokens"]) != args.new_tokens:
                    raise SystemExit(f"{name}: {len(result['tokens'])} tokens instead of {args.new_tokens}")
                if index >= args.warmup:
                    runs[name].append(result)
            print(
                f"round {index + 1}/{args.warmup + args.runs}", "(warm-up)" if index < args.warmup else "", flush=True
            )
    finally:
        for worker in workers.values():
            worker.close()
    return {name: {**summarize(runs[name]), **workers[name].ready, "tokens": runs[name][0]["tokens"]} for name in runs}


def main() -> None:
    parser = profile_parser(__doc__, ROOT / "build" / "bench" / "genai-int4", runs=7, new_tokens=32)
    parser.add_argument("--ratio", type=float, default=0.889)
    parser.add_argument("--text-tokens", type=int, default=64, help="Prompt: this many + the kept image tokens.")
    parser.add_argument("--threads", type=int, default=2, help="Intra-op threads of both sides.")
    parser.add_argument("--pause", type=float, default=0.2, help="Seconds between runs.")
    parser.add_argument("--agreement-steps", type=int, default=8)
    parser.add_argument("--genai-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--write", action="store_true", help="Write the section into --output (BENCHMARKS.md).")
    args = parser.parse_args()
    if args.runs < 1 or args.new_tokens < 2:
        raise SystemExit("--runs must be >= 1 and --new-tokens >= 2 (decode steps follow the first token)")
    args.out.mkdir(parents=True, exist_ok=True)

    from tpc.compiler.precision import PrecisionSettings

    defaults = PrecisionSettings()  # tpc's --quantize defaults; GenAI's builder is given the same
    quant = {
        "block_size": defaults.block_size,
        "symmetric": defaults.symmetric,
        "accuracy_level": defaults.accuracy_level,
    }
    python, versions = genai_python(args.genai_venv)
    art, reused = tpc_artifact(args, quant)
    manifest = json.loads((art / "manifest.json").read_text())
    keep = manifest["keep"]
    prompt_length = args.text_tokens + keep
    ids, ckpt = llama_checkpoint(args, args.out / f"{args.model}-llama", prompt_length)
    genai_dir, builder_cmd = genai_model(args, python, args.out / f"{args.model}-llama", quant)
    genai_config = json.loads((genai_dir / "genai_config.json").read_text())["model"]
    eos = genai_config["eos_token_id"]
    if sorted(eos if isinstance(eos, list) else [eos]) != sorted(manifest["runtime"]["eos_token_ids"]):
        raise SystemExit(f"end-of-sequence ids differ: GenAI {eos}, tpc {manifest['runtime']['eos_token_ids']}")

    facts = {
        "genai": graph_facts([genai_dir / genai_config["decoder"]["filename"]]),
        "tpc decoder": graph_facts([art / manifest["graphs"]["decoder"]["file"]]),
        "tpc embed": graph_facts([art / manifest["graphs"]["embed"]["file"]]),
    }
    result = measure(args, genai_dir, art, python, ids)
    check = manifest["verification"]
    n = args.agreement_steps
    doc = {
        "model": args.model,
        "ratio": args.ratio,
        "keep": keep,
        "prompt_tokens": prompt_length,
        "new_tokens": args.new_tokens,
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "quantization": {"bits": 4, **quant, "algorithm": "round-to-nearest"},
        "versions": {**versions, "onnxruntime (tpc side)": manifest["versions"]["onnxruntime"]},
        "tpc_artifact": str(art.relative_to(ROOT) if art.is_relative_to(ROOT) else art),
        "tpc_artifact_reused": reused,
        "tpc_compile_check": {"decoder": check.get("decoder"), "thresholds": check.get("thresholds")},
        "genai_builder": " ".join(builder_cmd),
        "checkpoint": {k: v for k, v in ckpt.items() if k != "fp32_tokens"},
        "graphs": facts,
        "results": result,
        "fp32_tokens": ckpt["fp32_tokens"],
        "agreement": {
            "tpc vs GenAI": agreement(result["tpc"]["tokens"], result["genai"]["tokens"], n),
            "tpc vs fp32": agreement(result["tpc"]["tokens"], ckpt["fp32_tokens"], n),
            "GenAI vs fp32": agreement(result["genai"]["tokens"], ckpt["fp32_tokens"], n),
        },
    }
    (args.out / f"{args.model}-side-by-side.json").write_text(json.dumps(doc, indent=2))
    lines = section(doc)
    if args.write:
        write_section(args.output, MARK, lines)
    print("\n".join(lines))


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f}" if n < 2**30 else f"{n / 2**20:.0f}"


def _ops(ops: dict) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(ops.items())) or "none"


def section(doc: dict) -> list[str]:
    g, t = doc["results"]["genai"], doc["results"]["tpc"]
    facts = doc["graphs"]
    q = doc["quantization"]
    check = doc["tpc_compile_check"]["decoder"] or {}
    ratio = t["decode_tok_s"] / g["decode_tok_s"]
    verdict = "at least equal: target met" if ratio >= 1 else "below GenAI: target not met"
    model_flag = "" if doc["model"] == "llava-bench" else f" --model {doc['model']}"
    ort, ort_genai = doc["versions"]["onnxruntime (tpc side)"], doc["versions"]["onnxruntime (GenAI side)"]
    ort = ort if ort == ort_genai else f"{ort} (GenAI side: {ort_genai})"
    lines = [
        "## int4 decoder: tpc vs ONNX Runtime GenAI's own int4 CPU decoder",
        "",
        f"`python benchmarks/genai_int4_bench.py --write{model_flag}` on `{doc['model']}`: the same Llama weights "
        "on both sides. "
        f"tpc: `tpc compile {doc['model']} --ratio {doc['ratio']} --quantize int4 --target ort` "
        f"({'the artifact of precision_bench.py' if doc['tpc_artifact_reused'] else 'compiled by this script'}), "
        "driven by tpc's own generate loop (the one `tpc profile` times: embedding graph, then decoder graph, per "
        "token). GenAI: the preset's language model and lm_head saved as a Hugging Face `LlamaForCausalLM` (fp32 "
        f"safetensors, logits checked equal to the LLaVA model's), built with `python -m "
        f"onnxruntime_genai.models.builder -p int4 -e cpu` (onnxruntime-genai "
        f"{doc['versions']['onnxruntime_genai']}), driven by its own `append_tokens` / `generate_next_token` loop. "
        f"Both quantize with ONNX Runtime {ort}'s MatMulNBits quantizer: "
        f"int4, block {q['block_size']}, {'symmetric' if q['symmetric'] else 'asymmetric'}, accuracy level "
        f"{q['accuracy_level']} (int8 compute), round-to-nearest; both run on that same ONNX Runtime build, CPU, "
        f"{doc['threads']} intra-op threads (GenAI: `intra_op_num_threads` in its genai_config.json). The same "
        f"token ids on both sides: a text prompt of {doc['prompt_tokens']} tokens (the benchmark's "
        f"{doc['prompt_tokens'] - doc['keep']} text tokens + the {doc['keep']} image tokens kept at ratio "
        f"{doc['ratio']}; text only, so both decoders see the same sequence length without a vision graph), "
        f"{doc['new_tokens']} new tokens, greedy, end-of-sequence suppressed on both sides (GenAI `min_length`, "
        f"tpc a masked argmax), so every run is {doc['new_tokens']} tokens. Each side in its own long-lived "
        f"process; runs alternate between them (order swapped every round), {doc['warmup']} warm-up round, "
        f"medians of {doc['runs']}. Prefill: prompt ids to the first token; decode tok/s: the "
        f"{doc['new_tokens'] - 1} later tokens over their time.",
        "",
        "| decoder | graph MB on disk | MatMulNBits | fused contrib ops | load peak RSS MB | prefill ms | "
        "decode tok/s (min-max) | ms/token |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    tpc_bytes = facts["tpc decoder"]["bytes"] + facts["tpc embed"]["bytes"]
    rows = [
        ("ONNX Runtime GenAI int4", _mb(facts["genai"]["bytes"]), facts["genai"], g),
        (
            "tpc int4",
            f"{_mb(tpc_bytes)} ({_mb(facts['tpc decoder']['bytes'])} decoder + {_mb(facts['tpc embed']['bytes'])} "
            "embedding)",
            facts["tpc decoder"],
            t,
        ),
    ]
    for label, size, graph, r in rows:
        nbits = "; ".join(f"{v} x ({k})" for k, v in graph["matmulnbits"].items())
        lines.append(
            f"| {label} | {size} | {nbits} | {_ops(graph['fused_ops'])} | {r['load_peak_rss_mb']:.0f} | "
            f"{r['prefill_ms']:.1f} | {r['decode_tok_s']:.1f} ({r['decode_tok_s_min']:.1f}-{r['decode_tok_s_max']:.1f})"
            f" | {r['decode_ms_per_token']:.2f} |"
        )
    agree = doc["agreement"]
    n = doc["agreement"]["tpc vs GenAI"]["first_steps"]

    def said(key: str) -> str:
        a = agree[key]
        return (
            f"{a['first_steps_equal']}/{n} of the first {n} tokens equal, {a['positions_equal']}/{a['length']} of all, "
            f"identical for the first {a['common_prefix']}"
        )

    cosine = check.get("logit_cosine_min")
    cosine = "n/a" if cosine is None else f"{cosine:.4f}"
    tokens = check.get("token_agreement")
    tokens = "n/a" if tokens is None else f"{tokens:.0%}"
    lines += [
        "",
        f"tpc decode / GenAI decode: **{ratio:.2f}x** ({verdict}); prefill {t['prefill_ms'] / g['prefill_ms']:.2f}x "
        "GenAI's time. Graph bytes: GenAI's model.onnx holds its embedding table, cos/sin caches and every layer; "
        "tpc keeps the embedding table in its own (unquantized) graph, counted here. Logits output: GenAI "
        f"{facts['genai'].get('logits')}, tpc {facts['tpc decoder'].get('logits')} (a decoder that returns every "
        "prompt position's logits runs the lm_head on all of them at prefill).",
        "",
        "Greedy tokens from the same prompt (random weights: reported, not asserted): "
        f"tpc vs GenAI {said('tpc vs GenAI')}; tpc vs the fp32 checkpoint (PyTorch) {said('tpc vs fp32')}; "
        f"GenAI vs fp32 {said('GenAI vs fp32')}. Repeated runs gave the same tokens: tpc {t['deterministic']}, "
        f"GenAI {g['deterministic']}. tpc's compile-time "
        f"check against the fp32 reference (thresholds 0 here, recorded): least logit cosine {cosine}, "
        f"greedy-token agreement {tokens} "
        f"({check.get('prompts', '?')} prompts x {check.get('steps', '?')} tokens, teacher-forced).",
    ]
    return lines


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
