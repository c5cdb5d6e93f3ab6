"""The TensorRT build plan: engines, optimization profiles, precision, and trtexec commands.

The plan is data (kept in the manifest) so that engines can be built later, on the
target (a Jetson builds its own engines from ONNX exported on an x86 host): by
``tpc build`` with the TensorRT Python API, or by the generated ``build_engines.sh``.

Profiles cover every shape the runtime asks for:

* ``vision``: batch 1..max_batch;
* ``embed``: prompt rows 1..max_prefill, and image rows 1 (decode placeholder) .. K;
* ``decoder`` profile 0 ``prefill``: seq 1..max_prefill with an empty past (past_seq 0);
  profile 1 ``decode``: one token with past_seq 1..max_context-1.

Grid families (Qwen2.5-VL, ``runtime.grid_vision``) have one vision graph per compiled grid,
``vision_<h>x<w>``: each is its own engine with one profile, ``pixel_patches`` [1..max_batch, L, P]
with L = h * w fixed by the grid; K (embed, prefill) is the largest kept count of any grid; M-RoPE
decoders (``position_dims`` 3) take ``position_ids`` [batch, seq, 3].
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from typing import Any

from tpc.errors import UsageError

PRECISIONS = ("fp16", "bf16", "fp32", "int8", "fp8")
# int8/fp8 engines are explicitly quantized in TensorRT 10: the ONNX graphs must carry Q/DQ nodes with calibrated
# scales (NVIDIA ModelOpt writes them); without them trtexec would use placeholder scales
QDQ_PRECISIONS = ("int8", "fp8")
QDQ_REQUIREMENT = (
    "{precision} engines need QuantizeLinear/DequantizeLinear nodes with calibrated scales in the ONNX graphs "
    "(NVIDIA ModelOpt's ONNX quantization on your own calibration images); layers without them run in fp16"
)
ENGINE_DIR = "engines"
TIMING_CACHE = f"{ENGINE_DIR}/timing.cache"
BUILD_SCRIPT = "build_engines.sh"


@dataclass(frozen=True)
class PlanSettings:
    precision: str = "fp16"
    max_batch: int = 1
    max_prompt_tokens: int = 512  # text tokens; prefill adds the K image tokens
    max_context: int | None = None  # default: the model's context
    workspace_mb: int = 4096

    def validate(self, model_context: int) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        for name in ("max_batch", "max_prompt_tokens", "workspace_mb"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_context is not None and not 2 <= self.max_context <= model_context:
            raise UsageError(f"--max-context {self.max_context} is outside [2, {model_context}]")


def _range(lo, opt, hi) -> dict[str, list[int]]:
    return {"min": list(lo), "opt": list(opt), "max": list(hi)}


def _batch_profile(signature: dict, max_batch: int) -> dict[str, dict[str, list[int]]]:
    """Every input at its fixed shape, with the leading ``batch`` axis from 1 to max_batch."""
    shapes = {}
    for value in signature["inputs"]:
        dims = [d if isinstance(d, int) else None for d in value["shape"]]
        if any(d is None for d in dims[1:]):
            raise UsageError(f"input {value['name']} has dynamic axes besides the batch; no plan rule for it")
        rest = dims[1:]
        shapes[value["name"]] = _range([1, *rest], [1, *rest], [max_batch, *rest])
    return shapes


def bucket_engines(signatures: dict[str, dict], buckets: list[int], settings: PlanSettings) -> dict[str, list]:
    """Profiles for a bucketed vision: batch profiles, and one projector profile per bucket."""
    engines: dict[str, list] = {}
    b = settings.max_batch
    for name, signature in signatures.items():
        if name == "projector":
            width = signature["inputs"][0]["shape"][2]
            engines[name] = [
                {"name": f"k{k}", "shapes": {"tokens": _range((1, k, width), (1, k, width), (b, k, width))}}
                for k in buckets
            ]
        elif name == "vision_encoder" or name.startswith("select_k"):
            engines[name] = [{"name": name, "shapes": _batch_profile(signature, b)}]
    return engines


def _positions(lo, opt, hi, dims: int = 1) -> dict[str, list[int]]:
    """``position_ids`` ranges: [batch, seq], or [batch, seq, dims] for M-RoPE (t, h, w) positions."""
    extra = (dims,) if dims > 1 else ()
    return _range((*lo, *extra), (*opt, *extra), (*hi, *extra))


def grid_vision_engines(runtime: dict[str, Any], b: int) -> dict[str, list]:
    """One engine per compiled grid (``runtime.grid_vision``), each with one batch profile: ``pixel_patches``
    [1..b, L, P], L = grid_h * grid_w (fixed by the grid), P the values of one flattened patch."""
    from tpc.artifact_layout import GRID_VISION_INPUT

    values = runtime["image_layout"]["patch_values"]
    engines = {}
    for name, (gh, gw) in runtime["grid_vision"]["grids"].items():
        length = int(gh) * int(gw)
        shapes = {GRID_VISION_INPUT: _range((1, length, values), (1, length, values), (b, length, values))}
        engines[name] = [{"name": name, "shapes": shapes}]
    return engines


def decoder_profiles(
    first: str,
    past_names: list[str],
    dims: tuple[int, int, int],
    b: int,
    max_prefill: int,
    opt_prefill: int,
    opt_past: int,
    context: int,
    position_dims: int = 1,
) -> list[dict]:
    """Profile 0 ``prefill`` (empty past, up to ``max_prefill`` rows) and 1 ``decode`` (one row,
    past up to the context) of a decoder graph whose first input is ``first``."""
    hidden, heads, head_dim = dims
    prefill = {
        first: _range((1, 1, hidden), (1, opt_prefill, hidden), (b, max_prefill, hidden)),
        "attention_mask": _range((1, 1), (1, opt_prefill), (b, max_prefill)),
        "position_ids": _positions((1, 1), (1, opt_prefill), (b, max_prefill), position_dims),
    }
    prefill.update(
        {n: _range((1, heads, 0, head_dim), (1, heads, 0, head_dim), (b, heads, 0, head_dim)) for n in past_names}
    )
    decode = {
        first: _range((1, 1, hidden), (1, 1, hidden), (b, 1, hidden)),
        "attention_mask": _range((1, 2), (1, opt_past + 1), (b, context)),
        "position_ids": _positions((1, 1), (1, 1), (b, 1), position_dims),
    }
    decode.update(
        {
            n: _range((1, heads, 1, head_dim), (1, heads, opt_past, head_dim), (b, heads, context - 1, head_dim))
            for n in past_names
        }
    )
    return [{"name": "prefill", "shapes": prefill}, {"name": "decode", "shapes": decode}]


def staged_engines(
    runtime: dict[str, Any], b: int, max_prefill: int, opt_prefill: int, opt_past: int, context: int
) -> dict[str, list]:
    """Profiles of the segments and stage selectors of an in-LLM pruning artifact.

    Segment s's prefill input is shorter by the image tokens dropped before it; its past
    axis (``past_seq_s``) still reaches ``context - 1`` because a text-only prompt is not
    pruned. The selectors see the previous segment's sequence, image block included.
    """
    from tpc.artifact_layout import NORMED_HIDDEN, segment_io, segment_name, select_inputs, select_name, stage_inputs
    from tpc.compiler.trt_check import TOPK_MAX_K
    from tpc.methods.in_llm import PruningPlan

    plan = PruningPlan.from_dict(runtime["llm_pruning"])
    per_bucket = runtime.get("llm_pruning_buckets")
    rule = runtime.get("llm_pruning_rule")  # one selector per stage for image blocks of any length
    plans = {int(k): PruningPlan.from_dict(v) for k, v in per_bucket.items()} if per_bucket else {None: plan}
    hidden, heads, head_dim = runtime["hidden_size"], runtime["num_kv_heads"], runtime["head_dim"]
    dims = runtime.get("position_dims", 1)  # M-RoPE: position_ids [batch, seq, 3]
    engines: dict[str, list] = {}
    for index in range(len(plan.segments())):
        # the longest prefill a segment sees: the bucket that dropped the fewest image tokens
        dropped = min(p.image_tokens - (p.stages[index - 1].keep if index else p.image_tokens) for p in plans.values())
        if rule:  # any block length: a short picture may drop (almost) nothing
            dropped = 0
        opt_dropped = plan.image_tokens - (plan.stages[index - 1].keep if index else plan.image_tokens)
        hi, opt = max(1, max_prefill - dropped), max(1, min(opt_prefill - opt_dropped, max_prefill - dropped))
        inputs, _ = segment_io(plan, index)
        engines[segment_name(index)] = decoder_profiles(
            inputs[0],
            inputs[3:],
            (hidden, heads, head_dim),
            b,
            hi,
            opt,
            max(1, opt_past - opt_dropped),
            context,
            dims,
        )
        if index == len(plan.stages):
            continue
        for bucket, bucket_plan in plans.items():
            n_in = stage_inputs(bucket_plan, index + 1)
            lo, top = n_in + 1, max(n_in + 1, hi)
            mid = min(max(lo, opt), top)
            shapes = {
                "hidden": _range((1, lo, hidden), (1, mid, hidden), (b, top, hidden)),
                **{n: _range((1, lo), (1, mid), (b, top)) for n in ("score", "position_ids", "attention_mask")},
                "image_start": _range((1,), (1,), (b,)),
            }
            shapes["position_ids"] = _positions((1, lo), (1, mid), (b, top), dims)
            if rule:  # block length and kept count as input lengths, up to the longest block
                shapes["image_rows"] = _range((1,), (n_in,), (rule["max_image_tokens"],))
                most = bucket_plan.stages[index].keep  # the longest block keeps the most (counts grow with n)
                if most > TOPK_MAX_K:
                    raise UsageError(
                        f"in-LLM stage {index + 1} keeps up to {most} image tokens of the longest picture; TensorRT's "
                        f"TopK takes at most {TOPK_MAX_K}: prune more (a higher ratio), prune per crop first "
                        "(--method ... --ratio R --llm-method ...), or compile for --target ort"
                    )
                shapes["keep_rows"] = _range((1,), (most,), (most,))
                lo, mid = 2, min(max(2, opt), top)
                for name in ("score", "position_ids", "attention_mask"):
                    shapes[name] = _range((1, lo), (1, mid), (b, top))
                shapes["position_ids"] = _positions((1, lo), (1, mid), (b, top), dims)
                shapes["hidden"] = _range((1, lo, hidden), (1, mid, hidden), (b, top, hidden))
            if NORMED_HIDDEN in select_inputs(bucket_plan, index + 1, bool(rule)):  # DART: the normed rows too
                shapes[NORMED_HIDDEN] = shapes["hidden"]
            name = select_name(index + 1, bucket)
            engines[name] = [{"name": name, "shapes": shapes}]
    return engines


def input_engines(runtime: dict[str, Any], b: int, max_prefill: int, opt_prefill: int) -> dict[str, list]:
    """Profiles of the LLM-input selectors (``select_input``): one per image-span length ``n``, over the
    assembled prompt (the span plus at least one other row, up to the longest prefill)."""
    from tpc.compiler.trt_check import TOPK_MAX_K

    hidden, engines = runtime["hidden_size"], {}
    for length, span in runtime["input_selection"]["spans"].items():
        n = int(length)
        if span["keep"] > TOPK_MAX_K:
            raise UsageError(
                f"the LLM-input selector keeps {span['keep']} of {n} image tokens; TensorRT's TopK takes at most "
                f"{TOPK_MAX_K}: prune more (a higher ratio), or compile for --target ort"
            )
        lo, top = n + 1, max(n + 1, max_prefill)
        mid = min(max(lo, opt_prefill), top)
        shapes = {
            "inputs_embeds": _range((1, lo, hidden), (1, mid, hidden), (b, top, hidden)),
            **{name: _range((1, lo), (1, mid), (b, top)) for name in ("attention_mask", "position_ids", "text_mask")},
            "image_start": _range((1,), (1,), (b,)),
        }
        shapes["position_ids"] = _positions((1, lo), (1, mid), (b, top), runtime.get("position_dims", 1))
        engines[span["graph"]] = [{"name": span["graph"], "shapes": shapes}]
    any_length = runtime["input_selection"].get("any_length")
    if any_length:  # DART or CDPruner on spans of any length: their length and quota as two inputs' lengths
        from tpc.methods.llm_input import input_keep

        longest = any_length["max_image_tokens"]
        most = input_keep(longest, runtime["input_selection"]["ratio"])  # the quota grows with the length
        if most > TOPK_MAX_K:
            raise UsageError(
                f"the LLM-input selector keeps up to {most} of {longest} image tokens; TensorRT's TopK takes at "
                f"most {TOPK_MAX_K}: prune more (a higher ratio), prune per crop first, or compile for --target ort"
            )
        top = max(longest + 1, max_prefill)
        mid = min(max(2, opt_prefill), top)
        shapes = {
            "inputs_embeds": _range((1, 2, hidden), (1, mid, hidden), (b, top, hidden)),
            **{name: _range((1, 2), (1, mid), (b, top)) for name in ("attention_mask", "text_mask")},
            "position_ids": _positions((1, 2), (1, mid), (b, top), runtime.get("position_dims", 1)),
            "image_start": _range((1,), (1,), (b,)),
            "image_rows": _range((1,), (longest,), (longest,)),
            "keep_rows": _range((1,), (most,), (most,)),
        }
        engines[any_length["graph"]] = [{"name": any_length["graph"], "shapes": shapes}]
    return engines


def make_plan(
    runtime: dict[str, Any],
    graph_files: dict[str, str],
    settings: PlanSettings,
    buckets: list[int] | None = None,
    signatures: dict[str, dict] | None = None,
) -> dict[str, Any]:
    settings.validate(runtime["max_context"])
    b, d = settings.max_batch, runtime["feature_dim"]
    # a bucketed artifact's default bucket may not be its largest: profiles reach the largest
    k_opt = runtime["keep"]
    k = max(buckets) if buckets else k_opt
    crops = runtime.get("image_layout", {}).get("crops_max", 1)  # crops are the vision graph's batch axis
    if crops > 1:  # a picture's rows: every crop's kept tokens (+ newline rows when unpruned)
        k = runtime.get("image_tokens_max", crops * k)
    grids = runtime.get("grid_vision")
    if grids:  # one picture per sample, of any compiled grid: the image block reaches the largest kept count
        k = max([k, runtime.get("image_tokens_max", 0), *grids["keep"].values()])
    position_dims = runtime.get("position_dims", 1)
    size, hidden = runtime["image_size"], runtime["hidden_size"]
    heads, head_dim, layers = runtime["num_kv_heads"], runtime["head_dim"], runtime["num_layers"]
    context = settings.max_context or runtime["max_context"]
    max_prefill = min(settings.max_prompt_tokens + k, context - 1)
    opt_prefill = min(64 + k_opt, max_prefill)
    opt_past = min(opt_prefill + 32, context - 1)
    past_names = [f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]

    vision = {"pixel_values": _range((1, 3, size, size), (crops, 3, size, size), (b * crops, 3, size, size))}
    embed = {
        "input_ids": _range((1, 1), (1, opt_prefill), (b, max_prefill)),
        "image_features": _range((1, 1, d), (1, k_opt, d), (b, k, d)),
    }
    engines = {
        "vision": [{"name": "vision", "shapes": vision}],
        "embed": [{"name": "embed", "shapes": embed}],
        "decoder": decoder_profiles(
            "inputs_embeds",
            past_names,
            (hidden, heads, head_dim),
            b,
            max_prefill,
            opt_prefill,
            opt_past,
            context,
            position_dims,
        ),
    }
    if grids:  # no single-image vision graph: one engine per compiled grid (built first, like vision)
        del engines["vision"]
        engines = {**grid_vision_engines(runtime, b), **engines}
    if runtime.get("llm_pruning"):
        del engines["decoder"]
        engines.update(staged_engines(runtime, b, max_prefill, opt_prefill, opt_past, context))
    if runtime.get("input_selection"):
        engines.update(input_engines(runtime, b, max_prefill, opt_prefill))
    if buckets:
        del engines["vision"]
        per_crop = dataclasses.replace(settings, max_batch=b * crops)
        engines.update(bucket_engines(signatures or {}, sorted(buckets), per_crop))
    return {
        "precision": settings.precision,
        **(
            {"requires": QDQ_REQUIREMENT.format(precision=settings.precision)}
            if settings.precision in QDQ_PRECISIONS
            else {}
        ),
        "workspace_mb": settings.workspace_mb,
        "timing_cache": TIMING_CACHE,
        "limits": {"max_batch": b, "max_prefill_tokens": max_prefill, "max_context": context},
        "engines": {
            name: {
                "onnx": graph_files[name],
                "engine": f"{ENGINE_DIR}/{name}.plan",
                "profiles": profiles,
                # grid graphs share their weights: their engines carry none and are refitted from the shared
                # ONNX weights when loaded (TensorRT's weight-stripped plans), so no weight is stored twice
                **({"strip_weights": True} if grids and name in grids["grids"] else {}),
            }
            for name, profiles in engines.items()
            if name in graph_files
        },
    }


def _dims(shape: list[int]) -> str:
    return "x".join(str(v) for v in shape)


def trtexec_command(plan: dict[str, Any], name: str, trtexec: str = "trtexec") -> list[str]:
    engine = plan["engines"][name]
    cmd = [
        trtexec,
        f"--onnx={engine['onnx']}",
        f"--saveEngine={engine['engine']}",
        f"--memPoolSize=workspace:{plan['workspace_mb']}M",
        f"--timingCacheFile={plan['timing_cache']}",
    ]
    if engine.get("strip_weights"):  # refitted from the ONNX weights at load (trtexec: refit-identical)
        cmd.append("--stripWeights")
    if plan["precision"] in QDQ_PRECISIONS:  # fp16 for the layers the Q/DQ nodes leave unquantized
        cmd += ["--fp16", f"--{plan['precision']}"]
    elif plan["precision"] != "fp32":
        cmd.append(f"--{plan['precision']}")
    for index, profile in enumerate(engine["profiles"]):
        if len(engine["profiles"]) > 1:
            cmd.append(f"--profile={index}")
        for key, flag in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
            shapes = ",".join(f"{tensor}:{_dims(r[key])}" for tensor, r in profile["shapes"].items())
            cmd.append(f"{flag}={shapes}")
    return cmd


def build_script(plan: dict[str, Any]) -> str:
    lines = [
        "#!/usr/bin/env bash",
        "# Generated by tpc: builds the TensorRT engines of this artifact on the target GPU.",
        "# Run it from the artifact directory on the device that will run the engines",
        "# (engines are specific to the GPU and the TensorRT version). `tpc build .` does the",
        "# same with the TensorRT Python API and records the GPU in manifest.json.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-trtexec}"',
        f"mkdir -p {ENGINE_DIR}",
    ]
    for name in plan["engines"]:
        cmd = trtexec_command(plan, name, trtexec="TRTEXEC_PLACEHOLDER")
        quoted = " \\\n    ".join(shlex.quote(part) for part in cmd)
        lines.append(quoted.replace("TRTEXEC_PLACEHOLDER", '"$TRTEXEC"'))
    lines.append('echo "engines written to $(pwd)/' + ENGINE_DIR + ' (tpc build . --use-trtexec also records the GPU)"')
    return "\n".join(lines) + "\n"
