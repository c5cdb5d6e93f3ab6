"""``tpc profile``: repeat generation with warm-up and report every stage as percentiles.

Profile JSON (schema ``tpc.profile`` version 1, ``tpc/profiling/profile.schema.json``):
``metrics`` maps ``<stage>_ms`` (and ``decode_tokens_per_s``) to
``{p50, p90, p99, min, max, mean, n, samples}``; scalars ``peak_memory_mb`` and
``kv_cache_bytes``; ``visual_tokens`` before/after; ``device``; the ``config`` used.

Grid families (Qwen2.5-VL: one vision graph per compiled grid) are profiled on a picture of ONE
compiled grid: by default the largest (the most patches; the synthetic picture is that grid's exact
pixel size, ``grid * patch_size``, so it runs unresized), ``--grid HxW`` (patches, or the graph name
``vision_HxW``) picks another compiled grid, and ``--image-size HxW`` (pixels) or ``--image`` a picture
that runs at its own grid or is resized to the nearest compiled one, as ``tpc run`` would.
``visual_tokens`` then reports the grid, its graph, its merged tokens (``before``) and the kept count
(``after``).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tpc.errors import UsageError
from tpc.profiling.device import describe_device
from tpc.profiling.stats import summarize
from tpc.profiling.timer import StageTimer

PROFILE_SCHEMA = "tpc.profile"
PROFILE_SCHEMA_VERSION = 1
STAGE_METRICS = (
    "preprocess_ms",
    "vision_ms",
    "embed_ms",
    "prefill_ms",
    "ttft_ms",
    "decode_ms",
    "decode_ms_per_token",
    "e2e_ms",
)
RATE_METRICS = ("decode_tokens_per_s",)
# Stages that partition the end-to-end time (ttft_ms is their prefix sum, not a part).
E2E_PARTS = ("preprocess_ms", "vision_ms", "embed_ms", "prefill_ms", "decode_ms")


@dataclass
class ProfileConfig:
    runs: int = 20
    warmup: int = 3
    batch: int = 1
    new_tokens: int = 32
    prompt: str | None = None  # None: a synthetic prompt of prompt_tokens tokens
    prompt_tokens: int = 64
    image: str | None = None  # None: a synthetic image; "none": text only
    provider: str = "cpu"
    threads: int | None = None
    seed: int = 0
    runtime: str = "auto"  # auto | ort | trt
    image_size: str | None = None  # "HxW" of the synthetic picture (default: the crop size, square)
    grid: str | None = None  # grid families: the compiled grid "HxW" (patches) to profile (default: the largest)

    def validate(self) -> None:
        for name in ("runs", "batch", "new_tokens", "prompt_tokens"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise UsageError(f"--warmup must be >= 0, got {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}")
        if self.image_size is not None:
            parse_image_size(self.image_size)
        if self.prompt is not None and not self.prompt.strip():
            raise UsageError("--prompt is empty: a prompt needs text (omit --prompt for a synthetic one)")
        if self.grid is not None:
            parse_grid(self.grid)
            if self.image_size is not None or self.image is not None:
                raise UsageError(
                    "--grid picks the synthetic picture's compiled grid; it does not combine with --image or "
                    "--image-size (a given picture runs at its own grid, or the nearest compiled one)"
                )


def parse_grid(text: str) -> tuple[int, int]:
    """``HxW`` in patches (or the graph name ``vision_HxW``), height first."""
    body = text.strip().lower().removeprefix("vision_")
    try:
        height, width = (int(v) for v in body.split("x"))
    except ValueError:
        raise UsageError(f"--grid {text!r}: expected HxW in patches (or vision_HxW), e.g. 16x16") from None
    if height < 1 or width < 1:
        raise UsageError(f"--grid {text}: both sides must be at least 1 patch")
    return height, width


def profile_grid(runtime: dict, grid: str | None) -> tuple[int, int] | None:
    """The compiled grid a grid-family artifact is profiled at: ``grid`` if given (it must be compiled),
    else the largest (most patches; equal areas: the larger (h, w)). None for other artifacts."""
    compiled = [tuple(int(v) for v in g) for g in runtime.get("grid_vision", {}).get("grids", {}).values()]
    if not compiled:
        if grid is not None:
            raise UsageError("--grid applies to artifacts with one vision graph per image grid (Qwen2.5-VL)")
        return None
    if grid is None:
        return max(compiled, key=lambda g: (g[0] * g[1], g))
    wanted = parse_grid(grid)
    if wanted not in compiled:
        names = ", ".join(f"{h}x{w}" for h, w in compiled)
        raise UsageError(f"--grid {grid}: not a compiled grid of this artifact; compiled: {names}")
    return wanted


def picture_size(config: ProfileConfig, runtime: dict) -> int | tuple[int, int]:
    """Size of the synthetic picture: ``--image-size``, else a grid family's chosen grid at its exact
    pixel size, else the vision graph's (square) crop size."""
    grid = profile_grid(runtime, config.grid)
    if config.image_size:
        return parse_image_size(config.image_size)
    if grid is not None:
        patch = int(runtime["image_layout"]["patch_size"])
        return grid[0] * patch, grid[1] * patch
    return runtime["image_size"]


def synthetic_prompt(tokenizer, tokens: int) -> str:
    """Text of about ``tokens`` tokens under ``tokenizer`` (deterministic)."""
    words = (
        "describe the objects colours and layout of this picture in careful detail and explain "
        "what each part could mean "
    ).split()
    text, ids = "", []
    while len(ids) < tokens:
        text = " ".join(words * (1 + tokens // len(words)))
        ids = tokenizer(text, add_special_tokens=False).input_ids
        words = words * 2
    return tokenizer.decode(ids[:tokens])


def synthetic_image(size: int | tuple[int, int], seed: int):
    """A random picture, ``size`` pixels square or ``(height, width)``."""
    from PIL import Image

    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def parse_image_size(text: str) -> tuple[int, int]:
    """``HxW`` in pixels, height first."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--image-size {text!r}: expected HxW in pixels, e.g. 672x1344") from None
    if height < 1 or width < 1:
        raise UsageError(f"--image-size {text}: both sides must be at least 1 pixel")
    return height, width


def reset_peak_memory() -> bool:
    """Restart the peak-RSS watermark (Linux >= 4.0), so a profile excludes an earlier compile."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb() -> float:
    """Peak resident set size of this process (since the last reset where supported)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 1024), 1)


def artifact_bytes(root: Path) -> int:
    """Bytes of the artifact on disk (graphs, weights, engines, processor, manifest)."""
    return sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file())


def profile_model(
    model, config: ProfileConfig, progress: Callable[[str], None] | None = None, artifact_path: str | None = None
) -> dict:
    """Profile a loaded ``CompiledModel``; returns the profile document."""
    from tpc.runtimes.prompting import load_image

    config.validate()
    progress = progress or (lambda _: None)
    loaded_peak = peak_memory_mb()  # the artifact's graphs are loaded; nothing has run yet
    runtime = model.runtime
    prompt = config.prompt or synthetic_prompt(model.encoder.tokenizer, config.prompt_tokens)
    if config.image == "none":
        images = None
    elif config.image:
        images = [load_image(config.image)] * config.batch
    else:
        images = [synthetic_image(picture_size(config, runtime), config.seed)] * config.batch
    prompts = [prompt] * config.batch
    sync = getattr(model.graphs, "synchronize", None)
    samples: dict[str, list[float]] = {m: [] for m in STAGE_METRICS + RATE_METRICS}
    kv_bytes, kept, image_tokens, kv_lengths, crops, pictures = 0, None, [], None, None, None
    for index in range(config.warmup + config.runs):
        timer = StageTimer(sync)
        start = time.perf_counter()
        result = model.generate(prompts, images, max_new_tokens=config.new_tokens, timer=timer, stop_at_eos=False)
        e2e = (time.perf_counter() - start) * 1e3
        progress("warm-up" if index < config.warmup else "run")
        if index < config.warmup:
            continue
        for name in STAGE_METRICS:
            if name == "e2e_ms":
                samples[name].append(e2e)
            elif name in result.timings_ms:
                samples[name].append(result.timings_ms[name])
        samples["decode_tokens_per_s"].append(result.decode_tokens_per_s * config.batch)
        kv_bytes, kept, kv_lengths = result.kv_cache_bytes, result.kept_indices, result.kv_lengths
        image_tokens += result.image_tokens or []
        crops = result.crops_per_image
        pictures = result.pictures
    metrics = {name: summarize(values) for name, values in samples.items() if values}
    buckets = manifest_buckets = model.artifact.manifest.get("buckets")
    if manifest_buckets:
        from tpc.runtimes.buckets import bucket_histogram

        buckets = {
            "sizes": manifest_buckets["sizes"],
            "adaptive": manifest_buckets["adaptive"],
            "histogram": bucket_histogram(image_tokens, manifest_buckets["sizes"]),
        }
    counts = [image_tokens[-1]] if images and image_tokens else None
    prompt_length = int(model.encoder.tokens(prompts[:1], counts).input_ids.shape[1])
    manifest = model.artifact.manifest
    return {
        "schema": PROFILE_SCHEMA,
        "schema_version": PROFILE_SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tpc_version": manifest["versions"]["tpc"],
        "artifact": {
            "path": artifact_path or str(model.artifact.root),
            "model": manifest["model"]["id"],
            "method": manifest["method"]["name"],
            "ratio": manifest.get("ratio"),
            "keep": max(image_tokens) if image_tokens else manifest["keep"],
            "target": manifest["target"],
            "precision": manifest.get("precision", {"dtype": "fp32"}),
            "bytes": artifact_bytes(model.artifact.root),
        },
        "config": dict(asdict(config), prompt=None if config.prompt is None else config.prompt),
        "device": describe_device(model.graphs.describe(), config.threads),
        "visual_tokens": _visual_tokens(manifest, images, image_tokens, crops, pictures),
        **({"buckets": buckets} if buckets else {}),
        "prompt_length": prompt_length,
        "decode_steps": config.new_tokens - 1,
        "metrics": metrics,
        "peak_memory_mb": peak_memory_mb(),
        "load_peak_memory_mb": loaded_peak,
        "kv_cache_bytes": int(kv_bytes),
        **({"kv_lengths": kv_lengths} if kv_lengths else {}),
        **({"llm_pruning": manifest["llm_pruning"]} if manifest.get("llm_pruning") else {}),
        "kept_indices_sample": kept[0].tolist() if kept is not None else None,
    }


def _visual_tokens(manifest: dict, images, image_tokens: list[int], crops, pictures) -> dict:
    """Per picture: what the vision tower produced, what reached the LLM (and, for grid families, the
    compiled grid the picture ran at: its graph, its merged tokens before pruning, the kept count)."""
    if images and pictures:  # grid family: the tokens of the picture's grid, not the largest grid's
        first = pictures[0]
        grid = [int(v) for v in first["grid"]]
        out = {
            "before": int(first["tokens"]),
            "after": int(first["kept"]),
            "grid": grid,
            "graph": f"vision_{grid[0]}x{grid[1]}",
            "image_size": [int(v) for v in first["size"]],
        }
        if first.get("resized_to"):
            out["resized_to"] = [int(v) for v in first["resized_to"]]
        return out
    return {
        "before": manifest["visual_tokens"]["before"] * (max(crops) if crops else 1),
        "after": (max(image_tokens) if image_tokens else 0) if images else 0,
        **({"crops_per_image": crops, "per_crop_before": manifest["visual_tokens"]["before"]} if crops else {}),
    }


def write_json(document: dict, path: str | Path) -> None:
    import json

    from tpc.outputs import write_text

    write_text(path, json.dumps(document, indent=2) + "\n")
