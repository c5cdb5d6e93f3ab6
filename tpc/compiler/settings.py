"""Compile settings and the checks that need no model (torch-free, so a bad flag costs < 1 s).

``check_settings`` runs before anything heavy is imported: target, method name and
arguments, budget ranges, buckets, TensorRT plan limits, the model argument and the
output directory. ``tpc compile`` calls it before importing the pipeline; the pipeline
calls it again, so the Python API gets the same errors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tpc.compiler.precision import PrecisionSettings, check_precision
from tpc.compiler.trt_plan import PlanSettings
from tpc.errors import UsageError
from tpc.methods import check_method_args
from tpc.methods.budget import keep_count
from tpc.methods.in_llm import LLM_METHODS
from tpc.models.source import check_model_arg
from tpc.outputs import check_artifact_output

TARGETS = ("onnx", "ort", "trt")

Progress = Callable[[str], None]


@dataclass
class CompileSettings:
    model: str
    output: Path
    method: str | None = None  # None: the family's default (fastervlm where the encoder has [CLS])
    ratio: float | None = None
    keep: int | None = None
    target: str = "ort"
    verify: bool = True
    force: bool = False
    dump_graphs: Path | None = None
    method_args: dict[str, Any] = field(default_factory=dict)
    buckets: list[int] | None = None  # kept-token counts one artifact serves (--buckets)
    select_layer: int | None = None  # select inside the ViT at this layer (--select-layer)
    llm_method: str | None = None  # in-LLM pruning after the pre-LLM method (--llm-method)
    llm_method_args: dict[str, Any] = field(default_factory=dict)
    llm_ratio: float | None = None
    implied_vision: bool = False  # --method fastv/pdrop: no pre-LLM selection asked for
    plan: PlanSettings = field(default_factory=PlanSettings)  # --target trt
    build_engines: bool = True  # --target trt: build here when TensorRT and a GPU are present
    precision: PrecisionSettings = field(default_factory=PrecisionSettings)  # --dtype, --quantize, thresholds
    input_method: str | None = None  # selection at the LLM input after the pre-LLM method (--input-method)
    input_method_args: dict[str, Any] = field(default_factory=dict)
    input_ratio: float | None = None
    # grid families (Qwen2.5-VL): image sizes (height, width) to compile, or the processor's pixel bounds
    image_sizes: list[tuple[int, int]] | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None


def parse_image_sizes(text: str | None) -> list[tuple[int, int]] | None:
    """``--image-sizes 448x448,672x448`` (height first, pixels) -> [(448, 448), (672, 448)]."""
    if text is None:
        return None
    sizes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or min(int(p) for p in parts) < 1:
            raise UsageError(f"--image-sizes {text}: {item.strip()!r} is not HEIGHTxWIDTH in pixels (e.g. 672x448)")
        sizes.append((int(parts[0]), int(parts[1])))
    return sizes


def check_grid_settings(settings: CompileSettings) -> None:
    for flag, value in (("--min-pixels", settings.min_pixels), ("--max-pixels", settings.max_pixels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"{flag} {value} must be a positive number of pixels")
    if settings.image_sizes is not None and not settings.image_sizes:
        raise UsageError("--image-sizes: give at least one HEIGHTxWIDTH")


def check_settings(settings: CompileSettings) -> CompileSettings:
    """Every check that needs no model; returns the settings with an in-LLM ``--method`` split out."""
    if settings.target not in TARGETS:
        raise UsageError(f"unknown target {settings.target!r}; choose one of: {', '.join(TARGETS)}")
    settings = split_llm_method(settings)
    from tpc.compiler.input_settings import check_input_settings

    settings = check_input_settings(settings)
    if settings.llm_method is not None:
        LLM_METHODS.get(settings.llm_method)
    if settings.llm_ratio is not None and not (
        isinstance(settings.llm_ratio, (int, float)) and 0.0 <= settings.llm_ratio < 1.0
    ):
        flag = "--ratio" if settings.implied_vision else "--llm-ratio"
        raise UsageError(f"{flag} {settings.llm_ratio} is outside [0, 1): it is the fraction of image tokens removed")
    if settings.method is None:
        if settings.method_args:
            raise UsageError("--method-arg needs --method (the default method depends on the model family)")
    elif check_method_args(settings.method, {k: str(v) for k, v in settings.method_args.items()}) is None:
        from tpc.methods import get_method

        get_method(settings.method)  # a plugin: ``module:function`` or an entry point (imports it)
    if settings.keep is None:
        keep_count(1 << 20, settings.ratio)  # range-check the ratio before loading anything
    elif isinstance(settings.keep, bool) or not isinstance(settings.keep, int) or settings.keep < 1:
        raise UsageError(f"--keep {settings.keep} is outside [1, visual tokens]: it counts the visual tokens kept")
    if settings.buckets is not None and (not settings.buckets or min(settings.buckets) < 1):
        raise UsageError("--buckets: every bucket must be a positive integer")
    if settings.select_layer is not None and settings.select_layer < 0:
        raise UsageError(f"--select-layer {settings.select_layer} must be >= 0")
    if settings.target == "trt":
        settings.plan.validate(model_context=1 << 30)
    if settings.select_layer is not None and settings.buckets:
        raise UsageError("--select-layer and --buckets cannot be combined yet")
    check_grid_settings(settings)
    check_precision(
        settings.precision, settings.target, settings.verify, settings.llm_method, settings.buckets, settings.method
    )
    check_model_arg(settings.model)
    check_artifact_output(Path(settings.output), settings.force)
    return settings


def split_llm_method(settings: CompileSettings) -> CompileSettings:
    """``--method fastv --ratio R`` means: every visual token reaches the LLM, FastV prunes R there."""
    if settings.method not in LLM_METHODS:
        return settings
    if settings.llm_method is not None:
        raise UsageError(
            f"--method {settings.method} is an in-LLM method; give a pre-LLM --method with "
            "--llm-method, or use it alone"
        )
    if settings.keep is not None:
        raise UsageError(
            f"--method {settings.method} prunes inside the LLM and takes --ratio (or its "
            "--method-arg budgets); --keep is for pre-LLM methods"
        )
    return dataclasses.replace(
        settings,
        method=None,
        method_args={},
        ratio=None,
        keep=None,
        llm_method=settings.method,
        llm_method_args=dict(settings.method_args),
        llm_ratio=settings.ratio,
        implied_vision=True,
    )


def budget_given(settings: CompileSettings) -> bool:
    """Whether the user asked for a budget (a ratio, a count, buckets, an in-LLM or an LLM-input method)."""
    given = (settings.ratio is not None, settings.keep is not None, bool(settings.buckets), settings.llm_method)
    return any((*given, settings.input_method))
