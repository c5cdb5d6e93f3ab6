"""`tpc compile`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tpc.errors import UsageError

COMPILE_STAGES = 9  # load, trace, passes, 3 exports, prepare, verify, manifest


@click.command("compile")
@click.argument("model")
@click.option(
    "--method",
    default=None,
    help="Token-selection method (see `tpc methods`), or module:function for a user score "
    "(default: the family's, fastervlm where the vision encoder has a [CLS] token; see `tpc models`).",
)
@click.option("--method-arg", "method_args", multiple=True, metavar="KEY=VALUE", help="A method parameter.")
@click.option("--ratio", type=float, default=None, help="Fraction of visual tokens removed, in [0, 1).")
@click.option("--keep", type=int, default=None, help="Visual tokens kept (overrides --ratio).")
@click.option(
    "--select-layer",
    type=int,
    default=None,
    help="fastervlm: select at this ViT layer; later layers run on the kept tokens only.",
)
@click.option(
    "--llm-method",
    default=None,
    help="In-LLM pruning after the pre-LLM method: fastv or pdrop (or give it as --method alone).",
)
@click.option(
    "--llm-method-arg", "llm_method_args", multiple=True, metavar="KEY=VALUE", help="A parameter of the in-LLM method."
)
@click.option("--llm-ratio", type=float, default=None, help="Fraction of the LLM's image tokens FastV removes.")
@click.option(
    "--input-method",
    default=None,
    help="Selection at the LLM input after the pre-LLM method: dart or cdpruner (or give it as --method alone).",
)
@click.option(
    "--input-method-arg",
    "input_method_args",
    multiple=True,
    metavar="KEY=VALUE",
    help="A parameter of the LLM-input method.",
)
@click.option("--input-ratio", type=float, default=None, help="Fraction of each image span the input method removes.")
@click.option("--buckets", default=None, help="Serve several kept-token counts from one artifact, e.g. 32,64,128,192.")
@click.option(
    "--target",
    type=click.Choice(["onnx", "ort", "trt"]),
    default="ort",
    show_default=True,
    help="onnx: portable graphs; ort: optimised offline for ONNX Runtime; trt: TensorRT plan + engines.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Artifact directory (default: build/<model>-<method>-<budget>).",
)
@click.option("--no-verify", is_flag=True, help="Skip the parity check against PyTorch.")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option(
    "--dump-graphs",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the graph before/after each pass here (also $TPC_DUMP_GRAPHS).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp16", "bf16", "fp32", "int8", "fp8"]),
    default="fp16",
    show_default=True,
    help="TensorRT engine precision (--target trt).",
)
@click.option(
    "--dtype",
    type=click.Choice(["fp32", "fp16", "bf16"]),
    default=None,
    help="Dtype of the exported graphs (default: trt fp16, onnx the checkpoint's, ort fp32).",
)
@click.option(
    "--quantize", type=click.Choice(["int4", "int8"]), default=None, help="Weight-only decoder (MatMulNBits)."
)
@click.option(
    "--store-weights",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="fp16: graphs not quantized store their weights in fp16 + Cast, computing in fp32 (ort/onnx).",
)
@click.option("--quant-block-size", type=int, default=32, show_default=True, help="--quantize: weights per scale.")
@click.option("--quant-asymmetric", is_flag=True, help="--quantize: zero points (default: symmetric).")
@click.option(
    "--quant-accuracy-level",
    type=int,
    default=4,
    show_default=True,
    help="--quantize: MatMulNBits compute (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8).",
)
@click.option(
    "--min-logit-cosine",
    type=float,
    default=None,
    help="Reduced precision: least logit cosine vs fp32 (default by precision).",
)
@click.option(
    "--min-token-agreement",
    type=float,
    default=None,
    help="Reduced precision: least greedy-token agreement vs fp32 (default by precision).",
)
@click.option("--max-batch", type=int, default=1, show_default=True, help="TensorRT profiles: largest batch.")
@click.option(
    "--max-prompt-tokens",
    type=int,
    default=512,
    show_default=True,
    help="TensorRT profiles: longest text prompt (image tokens come on top).",
)
@click.option("--max-context", type=int, default=None, help="TensorRT profiles: longest context (default: model's).")
@click.option("--workspace-mb", type=int, default=4096, show_default=True, help="TensorRT builder workspace.")
@click.option("--no-build", is_flag=True, help="--target trt: write the plan only, build engines on the target.")
@click.option(
    "--image-sizes",
    default=None,
    help="Grid families (Qwen2.5-VL): image sizes to compile, HEIGHTxWIDTH in pixels, e.g. 448x448,672x448.",
)
@click.option("--min-pixels", type=int, default=None, help="Grid families: the processor's smallest image area.")
@click.option(
    "--max-pixels", type=int, default=None, help="Grid families: the largest image area (default grid set up to it)."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def compile_cmd(
    model,
    method,
    method_args,
    ratio,
    keep,
    select_layer,
    llm_method,
    llm_method_args,
    llm_ratio,
    input_method,
    input_method_args,
    input_ratio,
    buckets,
    target,
    output,
    no_verify,
    force,
    dump_graphs,
    precision,
    dtype,
    quantize,
    store_weights,
    quant_block_size,
    quant_asymmetric,
    quant_accuracy_level,
    min_logit_cosine,
    min_token_agreement,
    max_batch,
    max_prompt_tokens,
    max_context,
    workspace_mb,
    no_build,
    image_sizes,
    min_pixels,
    max_pixels,
    quiet,
):
    """Compile MODEL (a preset, a checkpoint directory or a hub id) into an artifact."""
    from tpc.compiler.settings import CompileSettings, check_settings, parse_image_sizes
    from tpc.progress import StageProgress

    label = (method or "default").replace(":", ".")
    if output is None and buckets:
        output = Path("build") / f"{Path(model).name}-{label}-b{buckets.replace(',', '-')}"
    if output is None:
        budget = f"k{keep}" if keep is not None else f"r{ratio if ratio is not None else 0}"
        name = label + (f"+{llm_method}" if llm_method else "") + (f"+{input_method}" if input_method else "")
        output = Path("build") / f"{Path(model).name}-{name}-{budget}"
    from tpc.compiler.trt_plan import PlanSettings

    plan = PlanSettings(
        precision=precision,
        max_batch=max_batch,
        max_prompt_tokens=max_prompt_tokens,
        max_context=max_context,
        workspace_mb=workspace_mb,
    )
    args = _pairs(method_args, "--method-arg")
    llm_args = _pairs(llm_method_args, "--llm-method-arg")
    if llm_method is None and (llm_args or llm_ratio is not None):
        raise UsageError("--llm-method-arg/--llm-ratio need --llm-method")
    from tpc.compiler.precision import PrecisionSettings

    settings = CompileSettings(
        precision=PrecisionSettings(
            dtype=dtype,
            quantize=None if quantize is None else int(quantize[3:]),
            block_size=quant_block_size,
            symmetric=not quant_asymmetric,
            accuracy_level=quant_accuracy_level,
            min_logit_cosine=min_logit_cosine,
            min_token_agreement=min_token_agreement,
            store_weights=store_weights,
        ),
        model=model,
        output=output,
        method=method,
        ratio=ratio,
        keep=keep,
        target=target,
        method_args=args,
        buckets=_buckets(buckets),
        select_layer=select_layer,
        llm_method=llm_method,
        llm_method_args=llm_args,
        llm_ratio=llm_ratio,
        input_method=input_method,
        input_method_args=_pairs(input_method_args, "--input-method-arg"),
        input_ratio=input_ratio,
        verify=not no_verify,
        force=force,
        dump_graphs=dump_graphs,
        plan=plan,
        build_engines=not no_build,
        image_sizes=parse_image_sizes(image_sizes),
        min_pixels=min_pixels,
        max_pixels=max_pixels,
    )
    check_settings(settings)  # every flag checked before torch is imported
    if dump_graphs is not None:
        from tpc.outputs import check_writable

        check_writable(dump_graphs, "directory")
    from tpc.compiler.pipeline import compile_model

    stages = COMPILE_STAGES + (settings.precision.quantize is not None)  # + quantize decoder weights
    with StageProgress(stages, quiet=quiet, title="compile ").running() as progress:
        path = compile_model(settings, progress)
    manifest = json.loads((path / "manifest.json").read_text())
    tokens = manifest["visual_tokens"]
    check = "skipped" if manifest["verification"].get("skipped") else "passed"
    after = tokens["after"]
    if manifest.get("buckets"):
        kind = "adaptive, " if manifest["buckets"]["adaptive"] else ""
        after = f"{kind}buckets {','.join(map(str, manifest['buckets']['sizes']))} of"
    elif tokens["after"] == tokens["before"] and not (manifest.get("llm_pruning") or manifest.get("input_selection")):
        after = f"{after} (unpruned)"
    for note in manifest.get("notes", []) if not quiet else []:
        click.echo(f"note: {note}", err=True)
    if not quiet:
        precision = manifest.get("precision", {})
        weights = precision.get("dtype", "fp32") + (
            f", int{precision['quantize']['bits']} decoder" if precision.get("quantize") else ""
        )
        if precision.get("stored_fp16"):
            half = sum(g["stored_bytes"] for g in precision["stored_fp16"]["graphs"].values())
            weights += f", {half / 2**20:.1f} MiB of weights stored fp16"
        click.echo(
            f"compiled {model} -> {path} ({manifest['method']['name']}, {tokens['before']} -> "
            f"{after} visual tokens, {weights}, target {target}, verification {check}, "
            f"{manifest['compile_seconds']:.1f} s, peak memory {manifest['compile_peak_memory_mb'] / 1024:.1f} GiB)"
        )
        if manifest["verification"].get("mode") == "agreement with fp32":
            v = manifest["verification"]
            kept = "/".join(r["indices"] for r in v["vision"])
            click.echo(
                f"checked against fp32: kept indices {kept}; decoder logit cosine >= "
                f"{v['decoder']['logit_cosine_min']:.4f}, greedy agreement {v['decoder']['token_agreement']:.0%} "
                f"over {v['decoder']['prompts']} prompts x {v['decoder']['steps']} tokens"
            )
    llm = manifest.get("llm_pruning")
    if llm and not quiet:
        plans = list(manifest.get("llm_pruning_buckets", {}).values()) or [llm]
        into = "/".join(str(p["image_tokens"]) for p in plans)
        stages = ", ".join(
            f"layer {s['layer']}: " + "/".join(str(p["stages"][i]["keep"]) for p in plans)
            for i, s in enumerate(llm["stages"])
        )
        rule = manifest["runtime"].get("llm_pruning_rule")
        if rule:  # any block length: the counts shown are the longest block's
            into = f"up to {rule['max_image_tokens']} (per picture)"
        click.echo(f"in-LLM pruning {llm['method']}: {into} image tokens into the decoder; kept from {stages}")
    selection = manifest.get("input_selection")
    if selection and not quiet:
        spans = ", ".join(f"{n} -> {span['keep']}" for n, span in selection["spans"].items())
        if selection.get("any_length"):  # unpruned multi-crop: one selector, the quota per picture
            longest = selection["any_length"]["max_image_tokens"]
            spans = f"any length up to {longest}, each keeping ceil(n * (1 - {selection['ratio']}))"
        click.echo(f"LLM-input selection {selection['method']}: image-span tokens {spans}")
    if target == "trt":
        if manifest.get("engines"):
            engines = manifest["engines"]
            click.echo(f"built TensorRT {engines['tensorrt_version']} engines for {engines['gpu_name']}")
        else:
            why = "--no-build" if no_build else "no TensorRT/GPU here"
            click.echo(f"engines not built ({why}): on the target run `tpc build {path}` or `{path}/build_engines.sh`")


def _pairs(pairs, flag: str) -> dict[str, str]:
    args = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} {pair!r}: expected KEY=VALUE")
        args[key.strip()] = value.strip()
    return args


def _buckets(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UsageError(f"--buckets must be comma-separated integers, got {text!r}") from None
