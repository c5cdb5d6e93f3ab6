"""Precision of the exported graphs: ``--dtype``, ``--quantize`` and the agreement thresholds (torch-free).

* ``--dtype fp32|fp16|bf16``: the dtype of the exported weights and activations. The default
  follows the target: ``trt`` half precision (fp16), ``onnx`` the checkpoint's own dtype (a
  half-precision checkpoint gives fp16 graphs and is never upcast), ``ort`` (CPU) fp32.
* ``--quantize int4|int8``: weight-only MatMulNBits of the decoder's MatMul weights
  (``tpc.compiler.quantize``); the vision graph, where the selection runs, is never quantized.
* ``--store-weights fp16``: fp32 graphs (those not quantized) store their large weights in fp16,
  each followed by a Cast to fp32 (``tpc.compiler.weight_storage``); checked like reduced precision,
  with the kept indices required to equal the fp32 reference's.
* A reduced-precision artifact is checked against the fp32 reference by agreement metrics:
  kept indices (every bucket's, with ``--buckets``), logit cosine and greedy-token agreement; the
  thresholds are recorded; in-LLM pruning's staged decoder per stage (``tpc.compiler.verify_llm_precision``).
  Adaptive budgets with buckets and in-LLM DART compile in fp32 only; in-LLM pruning is not quantized.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from tpc.errors import UsageError

DTYPES = ("fp32", "fp16", "bf16")
TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
DTYPE_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
STORE_WEIGHTS = ("fp32", "fp16")  # --store-weights
FP32_ONLY_LLM = ("dart-llm",)  # in-LLM methods compiled and checked in fp32 only (check_precision)
LOAD_DEFAULTS = {"trt": "fp16", "ort": "fp32", "onnx": "auto"}  # auto: the checkpoint's (half stays half)

# default thresholds of the agreement check, by what reduced the precision
THRESHOLDS = {
    "fp16": {"min_logit_cosine": 0.999, "min_token_agreement": 0.9},
    "bf16": {"min_logit_cosine": 0.99, "min_token_agreement": 0.8},
    8: {"min_logit_cosine": 0.99, "min_token_agreement": 0.75},
    4: {"min_logit_cosine": 0.9, "min_token_agreement": 0.5},
}


@dataclass
class PrecisionSettings:
    dtype: str | None = None  # None: the target's default (LOAD_DEFAULTS)
    quantize: int | None = None  # 4 or 8 (--quantize int4|int8)
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4
    min_logit_cosine: float | None = None  # None: THRESHOLDS' default
    min_token_agreement: float | None = None
    store_weights: str = "fp32"  # --store-weights fp16: fp32 graphs' large weights stored in half precision

    def reduced(self, dtype: str) -> bool:
        return dtype != "fp32" or self.quantize is not None or self.stores_fp16(dtype)

    def stores_fp16(self, dtype: str) -> bool:
        """Whether fp32 graphs' weights are stored in fp16 (a half-precision checkpoint's graphs already are)."""
        return self.store_weights == "fp16" and dtype == "fp32"

    def thresholds(self, dtype: str) -> dict[str, float]:
        """The agreement thresholds that apply: the stricter-named default of what reduced the precision,
        overridden by the user's."""
        base = dict(THRESHOLDS[self.quantize] if self.quantize else THRESHOLDS.get(dtype, THRESHOLDS["fp16"]))
        if self.min_logit_cosine is not None:
            base["min_logit_cosine"] = self.min_logit_cosine
        if self.min_token_agreement is not None:
            base["min_token_agreement"] = self.min_token_agreement
        if self.stores_fp16(dtype):  # fp32 arithmetic on fp16-rounded weights: no near-tie flip is accepted
            base["exact_indices"] = True
        return base

    def as_dict(self, dtype: str) -> dict[str, Any]:
        data: dict[str, Any] = {"dtype": dtype}
        if self.quantize:
            data["quantize"] = self.quantize_settings().as_dict()
        if self.stores_fp16(dtype):
            data["store_weights"] = "fp16"
        return data

    def quantize_settings(self):
        from tpc.compiler.quantize import QuantizeSettings

        return QuantizeSettings(self.quantize, self.block_size, self.symmetric, self.accuracy_level)


def check_precision(
    precision: PrecisionSettings, target: str, verify: bool, llm_method: str | None, buckets=None, method=None
) -> None:
    """Every precision check that needs no model; one-line UsageErrors naming the flags."""
    if precision.dtype is not None and precision.dtype not in DTYPES:
        raise UsageError(f"--dtype {precision.dtype!r} is not one of {', '.join(DTYPES)}")
    for flag, value in (
        ("--min-logit-cosine", precision.min_logit_cosine),
        ("--min-token-agreement", precision.min_token_agreement),
    ):
        if value is not None and not 0.0 <= value <= 1.0:
            raise UsageError(f"{flag} {value} is outside [0, 1]")
    check_store_weights(precision.store_weights, target, precision.dtype)
    if precision.dtype == "bf16" and verify:
        raise UsageError(
            "--dtype bf16: ONNX Runtime's CPU provider has no bf16 kernels, so compile cannot check these graphs "
            "against the fp32 reference here; use --dtype fp16, or --target trt with --precision bf16 (engines "
            "built from fp16 graphs)"
        )
    if precision.quantize is not None:
        precision.quantize_settings().check()
        if target == "trt":
            why = (
                "NVIDIA ModelOpt is installed but tpc does not drive its int4 AWQ path yet"
                if importlib.util.find_spec("modelopt") is not None
                else "it needs NVIDIA ModelOpt (nvidia-modelopt), which is not installed here"
            )
            raise UsageError(
                f"--quantize int{precision.quantize} is ONNX Runtime's weight-only MatMulNBits; for TensorRT {why}: "
                "use --target ort or onnx, or --target trt with --precision int8/fp8 for the engine build"
            )
    reducing = precision.quantize is not None or precision.dtype in ("fp16", "bf16")
    if buckets and adaptive_method(method) and (reducing or precision.store_weights == "fp16"):
        raise UsageError(
            f"--buckets with {method} (an adaptive budget) compile in fp32 only: its per-image count is a "
            "threshold on the cumulative [CLS] mass, which reduced precision can move to another bucket (a "
            "kept set of another size, which no near-tie rule covers); drop --dtype/--quantize/--store-weights"
        )
    if llm_method in FP32_ONLY_LLM and (reducing or precision.store_weights == "fp16"):
        raise UsageError(
            f"in-LLM {llm_method} compiles in fp32 only: its greedy (pivots by key norm, then duplicates by cosine) "
            "has no near-tie rule, and half-precision rounding moves a pivot and with it the kept set; drop "
            "--dtype/--quantize/--store-weights, or use fastv or pdrop"
        )
    if llm_method is not None and precision.quantize is not None:
        raise UsageError(
            f"--quantize with in-LLM pruning ({llm_method}) is refused: the kept set would depend on quantized "
            "decoder layers (the scoring layers' q/k), which the agreement check does not bound; use --dtype fp16"
        )


def check_store_weights(store: str, target: str, dtype: str | None) -> None:
    """One-line UsageErrors for ``--store-weights`` that does not apply (needs no model)."""
    if store not in STORE_WEIGHTS:
        raise UsageError(f"--store-weights {store!r} is not one of {', '.join(STORE_WEIGHTS)}")
    if store == "fp32":
        return
    if target == "trt":
        raise UsageError(
            "--store-weights fp16 stores ONNX Runtime's fp32 graphs' weights in half precision; TensorRT engines "
            "take their weights' precision from --precision (fp16 by default): use --target ort or onnx"
        )
    if dtype in ("fp16", "bf16"):
        raise UsageError(f"--store-weights fp16: --dtype {dtype} graphs already store half-precision weights")


def load_dtype(
    precision: PrecisionSettings,
    target: str,
    fp32_only: str | None = None,
    buckets=None,
    method: str | None = None,
    llm_method: str | None = None,
) -> str:
    """The dtype to load the checkpoint in: the asked one, else the target's default (in-LLM pruning too);
    fp32 with ``fp32_only`` (a stage checked in fp32 only: LLM-input selection), with ``FP32_ONLY_LLM`` and
    with an adaptive method's buckets (``check_precision``)."""
    if precision.dtype is not None:
        return precision.dtype
    if fp32_only is not None or llm_method in FP32_ONLY_LLM or (buckets and adaptive_method(method)):
        return "fp32"
    return LOAD_DEFAULTS[target]


def adaptive_method(name: str | None) -> bool:
    """Whether ``--method name`` chooses its budget per image (``extra["adaptive"]``, e.g. cls-mass)."""
    if name is None:  # the family's default: a fixed budget
        return False
    from tpc.methods import get_method

    return bool(get_method(name).extra.get("adaptive"))
