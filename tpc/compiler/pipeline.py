"""``tpc compile``: load -> trace -> passes -> export -> prepare -> verify -> manifest.

The artifact is built in a temporary sibling directory and renamed into place only
when every step succeeded, so a failure never leaves a half-written artifact.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tpc.compiler import graphs as G
from tpc.compiler.onnx_export import graph_signature
from tpc.compiler.settings import CompileSettings, Progress, budget_given, check_settings
from tpc.compiler.trace import trace_vision
from tpc.compiler.trt_plan import BUILD_SCRIPT, build_script, make_plan
from tpc.errors import ExportError, ParityError, UsageError
from tpc.manifest import package_versions, write_manifest
from tpc.methods import get_method, keep_count
from tpc.methods.in_llm import LLM_METHODS
from tpc.models.decoder_common import write_image_token_row
from tpc.outputs import user_mode
from tpc.passes import BUCKETED_PASSES, DEFAULT_PASSES, PassContext, run_passes

log = logging.getLogger(__name__)

SESSION_SETTINGS = {
    "onnx": {"optimization": "all", "intra_op_num_threads": 0, "inter_op_num_threads": 0},
    "ort": {
        "optimization": "all",
        "offline_optimization": "extended",
        "intra_op_num_threads": 0,
        "inter_op_num_threads": 0,
    },
}
SESSION_SETTINGS["trt"] = SESSION_SETTINGS["onnx"]  # ONNX Runtime on the portable graphs, when asked


def compile_model(settings: CompileSettings, progress: Progress | None = None) -> Path:
    progress = progress or (lambda stage: log.info("compile: %s", stage))
    settings = check_settings(settings)
    method = params = None  # the family's default is resolved once the model is loaded
    if settings.method is not None:
        method = get_method(settings.method)
        params = method.parse_args({k: str(v) for k, v in settings.method_args.items()})
    output = Path(settings.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        manifest = _build(settings, method, params, staging, progress)
        progress("manifest")
        write_manifest(staging, manifest)
        staging.chmod(user_mode())  # mkdtemp makes it 0700; an artifact is as readable as any output
        _replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def _build(settings: CompileSettings, method, params: dict, out: Path, progress: Progress) -> dict[str, Any]:
    from tpc.models import load_model
    from tpc.models.families import make_adapter

    started = time.perf_counter()
    from tpc.compiler.precision import DTYPE_NAMES, load_dtype

    progress("load model")
    fp32_only = settings.input_method  # in-LLM pruning follows the target's dtype; LLM-input selection: fp32
    loaded = load_model(
        settings.model,
        load_dtype(
            settings.precision, settings.target, fp32_only, settings.buckets, settings.method, settings.llm_method
        ),
    )
    adapter = make_adapter(loaded.model, loaded.processor)
    weights = next(loaded.model.parameters()).dtype
    dtype = DTYPE_NAMES[str(weights).removeprefix("torch.")]
    reduced = settings.precision.reduced(dtype)

    if method is None:
        method = get_method(adapter.default_method)
        params = method.parse_args({})
    grid_family = hasattr(adapter, "set_grids")  # one vision graph per compiled image grid (Qwen2.5-VL)
    if grid_family:
        from tpc.compiler import grid_vision

        grid_vision.prepare(settings, adapter, method, reduced, getattr(loaded, "default_image_sizes", ()))
    if method.needs_cls and not adapter.vision.has_cls:
        from tpc.methods import builtin_methods

        usable = [name for name in builtin_methods().names() if not builtin_methods().get(name).needs_cls]
        raise UsageError(
            f"method {method.name} scores with the [CLS] attention row and {adapter.title}'s vision encoder has no "
            f"[CLS] token; methods that apply: {', '.join(usable)}"
        )
    notes: list[str] = []
    if method.resolve_params is not None:
        params, method_notes = method.resolve_params(adapter.vision, params, set(settings.method_args))
        notes += method_notes
    if not budget_given(settings) and method.resolve_keep is None:
        n = adapter.vision.num_patches
        notes.append(
            f"no --ratio/--keep given: compiled UNPRUNED ({n} -> {n} visual tokens, the ratio 0 reference); "
            "pass --ratio R or --keep K to prune"
        )
    keep = keep_count(adapter.vision.num_patches, settings.ratio, settings.keep)
    if grid_family:  # every grid has its own budget; the manifest's keep is the largest grid's
        keep = adapter.keep_of(adapter.grids[-1], settings.ratio, settings.keep)
    if method.resolve_keep is not None:
        keep = keep_count(adapter.vision.num_patches, keep=method.resolve_keep(keep, params))
    buckets = sorted(set(settings.buckets or []))
    if buckets and (buckets[0] < 1 or buckets[-1] > adapter.vision.num_patches):
        raise UsageError(f"--buckets: every bucket must be in [1, {adapter.vision.num_patches}]")
    validate = method.extra.get("validate_keep")
    for size in buckets or [keep]:
        if validate is not None:
            validate(adapter.vision.num_patches, size, params)
    if method.extra.get("needs_buckets") and not buckets:
        raise UsageError(f"method {method.name} chooses its budget per image; compile it with --buckets")
    if buckets:
        from tpc.runtimes.buckets import bucket_for

        asked = settings.keep is not None or settings.ratio is not None
        keep = bucket_for(keep, buckets) if asked and not method.extra.get("adaptive") else buckets[-1]

    llm_plan, llm_plans, llm_rule = None, {}, None
    if settings.llm_method is not None:  # before any tracing: a refusal costs nothing
        llm_plans, llm_rule = _llm_plans(settings, adapter, method, keep, buckets)
        llm_plan = next(iter(llm_plans.values())) if None in llm_plans else _default_plan(adapter, keep, llm_plans)

    from tpc.compiler import input_stage

    input_selection = input_stage.prepare_input_stage(settings, adapter, keep)  # refusals before any tracing
    progress("trace vision")
    bucket_info: dict[str, Any] = {}
    grid_info: dict[str, Any] = {}
    if grid_family:
        progress("graph passes")
        progress("export vision")
        paths, grid_info, pass_log = grid_vision.export_grid_vision(adapter, method, params, settings, out, weights)
    else:  # one graph: crops on the batch axis
        gm = trace_vision(adapter.vision_boundary(), adapter.vision.image_size, weights)
        progress("graph passes")
        ctx = PassContext(
            layout=adapter.vision, method=method, keep=keep, params=params, select_layer=settings.select_layer
        )
        passes = BUCKETED_PASSES if buckets else DEFAULT_PASSES
        gm, pass_log = run_passes(gm, ctx, passes, dump_dir=settings.dump_graphs)
        progress("export vision")
    if buckets:
        from tpc.compiler.buckets import FORM, export_bucketed_vision
        from tpc.passes.expose_selection_inputs import selection_input_names

        paths = export_bucketed_vision(gm, adapter, method, params, buckets, out)
        bucket_info = {
            "sizes": buckets,
            "form": FORM,
            "graphs": list(paths),
            "encoder_outputs": selection_input_names(method),
            "adaptive": bool(method.extra.get("adaptive")),
            "default": keep,
        }
    elif not grid_family:
        paths = {G.VISION: G.export_vision(gm, adapter.vision, out, weights)}
    gm = None  # the traced module keeps every weight of the checkpoint alive (its storage), not only the tower's
    progress("export embedding")
    paths[G.EMBED] = G.export_embedding(
        adapter.embedding_step(), adapter.text, adapter.vision.feature_dim, out, weights
    )
    progress("export decoder")
    if llm_plan is None:
        paths[G.DECODER] = G.export_decoder(adapter.decoder_step(), adapter.text, out, weights)
    else:
        from tpc.compiler.staged_graphs import export_staged_decoder

        paths.update(export_staged_decoder(adapter.model, llm_plans, adapter.text, out, dynamic=bool(llm_rule)))
    paths.update(input_stage.export_input_stage(input_selection, adapter, out))
    loaded.processor.save_pretrained(str(out / "processor"))
    runtime_files = adapter.write_runtime_files(out)
    checked = _checked_method(method, adapter, settings)
    runtime_files.update(write_image_token_row(adapter.model, adapter.text.image_token_id, out))
    references = None
    if settings.verify and reduced:  # the fp32 reference's outputs first, then its weights are freed
        from tpc.compiler.verify_precision import reduced_references, release_weights

        getattr(progress, "add_stages", lambda n: None)(1)
        progress("fp32 reference outputs")
        staged = {"plans": llm_plans, "rule": llm_rule} if llm_plan is not None else None
        references = reduced_references(adapter, checked, keep, params, grid_info or None, bucket_info or None, staged)
        release_weights(loaded.model)  # a 7 B model and its graphs never share the memory
    quantized: dict[str, Any] = {}
    if settings.precision.quantize is not None:
        progress("quantize decoder weights")
        fuse = adapter.text.max_context if settings.target == "ort" else None
        paths, quantized = _quantize(paths, settings.precision.quantize_settings(), fuse)
    signatures = {name: graph_signature(path) for name, path in paths.items()}

    runtime = _runtime_section(adapter, keep)
    if grid_info:
        runtime["grid_vision"] = {k: grid_info[k] for k in ("grids", "keep", "tokens")}
    runtime["dtype"] = str(weights).removeprefix("torch.")
    if input_selection is not None:
        runtime["input_selection"] = input_selection
    if llm_plan is not None:
        runtime["llm_pruning"] = llm_plan.as_dict()
        if llm_rule is not None:  # any block length: the plan is made per picture at run time
            runtime["llm_pruning_rule"] = llm_rule
        if None not in llm_plans:  # keyed by the image-block length (buckets, crop grids)
            runtime["llm_pruning_buckets"] = {str(size): plan.as_dict() for size, plan in llm_plans.items()}
    extra: dict[str, Any] = {}
    if settings.target == "ort":
        progress("optimize for onnxruntime")
        paths = _optimize_for_ort(paths, out)
    stored: dict[str, Any] = {}
    if settings.precision.stores_fp16(dtype):  # after ORT's optimiser, which would fold the Casts back
        from tpc.compiler.weight_storage import graphs_kept_fp32, store_fp16

        getattr(progress, "add_stages", lambda n: None)(1)
        progress("store weights in fp16")
        kept_fp32 = graphs_kept_fp32(quantized, list(grid_info.get("grids", {})))
        stored = {"graphs": store_fp16(paths, skip=kept_fp32), "kept_fp32": kept_fp32}
    if grid_info and (settings.target == "ort" or stored):  # grid graphs' weights written anew: one shared copy
        from tpc.compiler.grid_vision import share_grid_weights

        grid_info["weights"] = share_grid_weights(paths, out)
    if settings.target == "trt":
        progress("TensorRT plan and check")
        extra = _prepare_trt(settings, runtime, paths, signatures, out)
    runtime["files"] = runtime_files

    session = dict(SESSION_SETTINGS[settings.target])
    if llm_plan is not None:  # decoder segments run back to back: no thread spinning between them
        session["allow_spinning"] = False
    verification: dict[str, Any] = {"skipped": True}
    if settings.verify:
        progress("verify against PyTorch")
        from tpc.compiler.verify import verify_graphs
        from tpc.runtimes.ort import OrtGraphs

        if reduced:  # agreement with the fp32 reference (its outputs computed before the model was freed)
            from tpc.artifact_layout import segment_name
            from tpc.compiler.check_memory import ensure_whole_graphs_fit
            from tpc.compiler.verify_precision import compare_reduced
            from tpc.compiler.verify_segments import DecoderPieces
            from tpc.runtimes.ort import session_options

            pieces = DecoderPieces.load(paths[G.DECODER]) if G.DECODER in paths else None  # upcast: a few layers
            count = len(llm_plan.segments()) if llm_plan is not None else 0
            segments = [paths[segment_name(i)] for i in range(count)]  # in-LLM: segment by segment
            loaded_paths = {n: p for n, p in paths.items() if p not in segments and (pieces is None or n != G.DECODER)}
            ensure_whole_graphs_fit(list(loaded_paths.values()), "these reduced-precision graphs whole")
            graphs = OrtGraphs(loaded_paths, session, adapter.text.num_layers)
            thresholds = settings.precision.thresholds(dtype)
            options = session_options(session)
            runner = None if pieces is None else (pieces, options)
            verification = compare_reduced(graphs, references, thresholds, runner, (segments, options))
        else:
            graphs = OrtGraphs(paths, session, adapter.text.num_layers)
            verification = verify_graphs(
                graphs, adapter, checked, keep, params, bucket_info or None, runtime, llm_plans or None, grid_info
            )
            if input_selection is not None:
                verification["input_selection"] = input_stage.check_input_stage(graphs, adapter, runtime)
        if adapter.layout_samples() and not bucket_info and not reduced:  # crops -> a picture's rows, every grid
            from tpc.compiler.verify import verify_layout

            verification["layout"] = verify_layout(graphs, adapter, checked, keep, params, runtime, out)
            failed = [r for r in verification["layout"] if not r["passed"]]
            if failed:
                raise ParityError(
                    "compiled crops-to-rows layout disagrees with the reference: "
                    + "; ".join(
                        f"{r['picture']}: {r['rows']} rows vs {r['reference_rows']}, order {r['order']}, "
                        f"diff {r['max_abs_diff']:.2e}"
                        for r in failed
                    )
                )
        del graphs

    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "model": dict(loaded.source, family=adapter.family, architecture=type(loaded.model).__name__),
        "method": {
            "name": input_stage.method_label(settings, _method_label(method.name, llm_plan, settings)),
            "parameters": params,
            "prunes_at": method.prunes_at,
            "stage": method.stage,
            "select_layer": settings.select_layer,
            "vision_method": method.name,
        },
        **({"llm_pruning": llm_plan.as_dict()} if llm_plan is not None else {}),
        **({"input_selection": input_selection} if input_selection is not None else {}),
        **({"llm_pruning_buckets": runtime["llm_pruning_buckets"]} if "llm_pruning_buckets" in runtime else {}),
        "ratio": settings.ratio if settings.keep is None else None,
        "keep": keep,
        "visual_tokens": {"before": adapter.vision.num_patches, "after": keep},
        "target": settings.target,
        "precision": dict(
            settings.precision.as_dict(dtype),
            **({"quantized_graphs": quantized} if quantized else {}),
            **({"stored_fp16": stored} if stored else {}),
            **({"thresholds": settings.precision.thresholds(dtype)} if reduced else {}),
        ),
        "passes": pass_log,
        "graphs": {name: dict(signatures[name], file=paths[name].name) for name in paths},
        **({"buckets": bucket_info} if bucket_info else {}),
        **({"grid_vision": grid_info} if grid_info else {}),
        "session": session,
        "runtime": runtime,
        "verification": verification,
        **extra,
        "notes": notes,
        "compile_seconds": round(time.perf_counter() - started, 2),
        "compile_peak_memory_mb": _peak_memory_mb(),
    }


def _llm_plans(settings: CompileSettings, adapter, method, keep: int, buckets: list[int]) -> tuple[dict, Any]:
    """One in-LLM plan per image-block length the decoder can receive, keyed by that length, and the
    length-independent rule when the lengths are not a finite set (else None).

    A fixed-budget single-crop artifact has one length: its plan is keyed by None (one selector
    per stage). Buckets and crop grids make several lengths: one selector per stage and length.
    Unpruned crops make any length: one selector per stage that takes the length at run time,
    shown by the plan of the longest block.
    """
    llm_method = LLM_METHODS.get(settings.llm_method)
    args = {k: str(v) for k, v in settings.llm_method_args.items()}
    lengths: set[int] = set()
    for size in buckets or [keep]:
        counts = adapter.image_token_counts(size)
        if counts is None:  # unpruned crops: the block length follows each picture's aspect ratio
            longest = adapter.max_image_tokens(size)
            rule = {"method": llm_method.name, "args": args, "ratio": settings.llm_ratio}
            rule.update(composed=not settings.implied_vision, max_image_tokens=longest)
            plan = llm_method.plan(args, adapter.text.num_layers, longest, settings.llm_ratio, rule["composed"])
            return {None: plan}, rule
        lengths.update(counts)
    keyed = bool(buckets) or len(lengths) > 1
    plans = {
        (n if keyed else None): llm_method.plan(
            args, adapter.text.num_layers, n, settings.llm_ratio, composed=not settings.implied_vision
        )
        for n in sorted(lengths)
    }
    return plans, None


def _default_plan(adapter, keep: int, plans: dict):
    """The plan the manifest shows: the one for a picture of the default budget's largest crop grid."""
    return plans[max(adapter.image_token_counts(keep))]


def _checked_method(method, adapter, settings: CompileSettings):
    """The method as verification recomputes it: in-ViT selection at the layer the user chose."""
    if settings.select_layer is None or settings.select_layer == adapter.vision.feature_layer:
        return method
    import dataclasses
    import functools

    from tpc.methods.in_vit import in_vit_reference

    return dataclasses.replace(method, reference=functools.partial(in_vit_reference, layer=settings.select_layer))


def _method_label(vision: str, llm_plan, settings: CompileSettings) -> str:
    if llm_plan is None:
        return vision
    return llm_plan.method if settings.implied_vision else f"{vision}+{llm_plan.method}"


def _prepare_trt(
    settings: CompileSettings, runtime: dict, paths: dict[str, Path], signatures: dict, out: Path
) -> dict[str, Any]:
    """Plan, build script, static check (blockers fail compile), and engines where possible."""
    import onnx

    from tpc.compiler.trt_build import build_engines, tensorrt_usable
    from tpc.compiler.trt_check import check_graph

    plan = make_plan(
        runtime,
        {name: path.name for name, path in paths.items()},
        settings.plan,
        sorted(set(settings.buckets or [])),
        signatures,
    )
    script = out / BUILD_SCRIPT
    script.write_text(build_script(plan))
    script.chmod(0o755)
    reports = [
        check_graph(onnx.load(str(paths[name]), load_external_data=False), name, plan["engines"][name]["profiles"])
        for name in paths
    ]
    blockers = [f"{r.graph}: {b}" for r in reports for b in r.blockers]
    if blockers:
        raise ExportError(f"TensorRT check failed ({len(blockers)} blocker(s)): " + "; ".join(blockers[:3]))
    extra: dict[str, Any] = {"trt_plan": plan, "trt_check": [r.as_dict() for r in reports]}
    if settings.build_engines and tensorrt_usable():
        manifest_view = {"trt_plan": plan}
        extra["engines"] = build_engines(out, manifest_view)
    return extra


def _peak_memory_mb() -> float:
    from tpc.profiling.profiler import peak_memory_mb

    return peak_memory_mb()


def _quantize(paths: dict[str, Path], quantize, fuse: int | None = None) -> tuple[dict[str, Path], dict[str, Any]]:
    """Weight-only MatMulNBits of the decoder graphs (the vision graph, where tokens are selected, stays).

    ``fuse`` (the model's context, for ``--target ort``): the flat decoder first goes through the ONNX decoder
    passes (forms ONNX Runtime fuses, merged projections, rotary caches of that many positions); quantized
    graphs only, as they change results by rounding (fp32 graphs stay as exported).
    """
    from functools import partial

    from tpc.compiler.quantize import quantize_graph
    from tpc.passes.onnx_decoder import optimize_decoder

    stats = {}
    out = dict(paths)
    for name, path in paths.items():
        if not name.startswith(G.DECODER):
            continue
        target = path.with_name(f"{name}.q{quantize.bits}.onnx")
        rewrite = partial(optimize_decoder, max_positions=fuse) if fuse and name == G.DECODER else None
        stats[name] = quantize_graph(path, target, quantize, rewrite)
        path.unlink()
        path.with_name(path.name + ".data").unlink(missing_ok=True)
        out[name] = target
    return out, stats


def _optimize_for_ort(paths: dict[str, Path], out: Path) -> dict[str, Path]:
    from tpc.runtimes.ort import optimize_offline

    optimized = {}
    for name, path in paths.items():
        target = out / f"{name}.ort.onnx"
        optimize_offline(path, target, level=SESSION_SETTINGS["ort"]["offline_optimization"])
        path.unlink()
        data = path.with_name(path.name + ".data")
        if data.exists():
            data.unlink()
        optimized[name] = target
    return optimized


def _runtime_section(adapter, keep: int) -> dict[str, Any]:
    text, vision = adapter.text, adapter.vision
    return {
        "image_token_id": text.image_token_id,
        "image_size": vision.image_size,
        "num_patches": vision.num_patches,
        "keep": keep,
        "feature_dim": vision.feature_dim,
        "num_layers": text.num_layers,
        "num_kv_heads": text.num_kv_heads,
        "head_dim": text.head_dim,
        "hidden_size": text.hidden_size,
        "vocab_size": text.vocab_size,
        "max_context": text.max_context,
        "eos_token_ids": list(text.eos_token_ids),
        "pad_token_id": text.pad_token_id,
        "dtype": "float32",
        "image_layout": adapter.image_layout(),
        "image_tokens_max": adapter.max_image_tokens(keep),
        "position_dims": text.position_dims,
    }


def _replace(staging: Path, output: Path) -> None:
    """Move the finished artifact into place; an old one is removed only afterwards."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{int(time.time() * 1e3)}")
        output.rename(old)
    staging.rename(output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
