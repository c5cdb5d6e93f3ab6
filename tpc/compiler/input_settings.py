"""The checks of ``--input-method`` (selection at the LLM input) that need no model.

``--method dart`` / ``--method cdpruner`` alone means: every visual token reaches the LLM
input and the input method prunes R there (like ``--method fastv``). Bad arguments and the
combinations not supported yet are one-line ``UsageError``s before any model loads.
"""

from __future__ import annotations

import dataclasses

from tpc.errors import UsageError
from tpc.methods.llm_input import INPUT_METHODS, check_input_args, input_params, parse_input_args


def split_input_method(settings):
    """``--method dart --ratio R``: no pre-LLM selection, the LLM-input method removes R of each span."""
    if settings.method not in INPUT_METHODS:
        return settings
    if settings.input_method is not None:
        raise UsageError(
            f"--method {settings.method} selects at the LLM input; give a pre-LLM --method with "
            "--input-method, or use it alone"
        )
    if settings.keep is not None:
        raise UsageError(f"--method {settings.method} selects at the LLM input and takes --ratio; --keep is pre-LLM")
    return dataclasses.replace(
        settings,
        method=None,
        method_args={},
        ratio=None,
        keep=None,
        input_method=settings.method,
        input_method_args=dict(settings.method_args),
        input_ratio=settings.ratio,
    )


def check_input_settings(settings):
    """Every ``--input-method`` check that needs no model; returns the settings with it split out."""
    alone = settings.method in INPUT_METHODS
    settings = split_input_method(settings)
    if settings.input_method is None:
        if settings.input_method_args or settings.input_ratio is not None:
            raise UsageError("--input-method-arg/--input-ratio need --input-method")
        return settings
    flag = "--ratio" if alone else "--input-ratio"
    if settings.input_method not in INPUT_METHODS:
        raise UsageError(f"unknown --input-method {settings.input_method!r}; choose one of: {', '.join(INPUT_METHODS)}")
    ratio = settings.input_ratio
    if ratio is None:
        raise UsageError(f"{settings.input_method} selects at the LLM input: give {flag} R (the fraction removed)")
    if ratio is None or isinstance(ratio, bool) or not (isinstance(ratio, (int, float)) and 0.0 <= ratio < 1.0):
        raise UsageError(
            f"{flag} {ratio} is outside [0, 1): it is the fraction of each image span {settings.input_method} removes"
        )
    input_params(settings.input_method)
    pairs = {k: str(v) for k, v in settings.input_method_args.items()}
    params = parse_input_args(settings.input_method, pairs, "--method-arg" if alone else "--input-method-arg")
    check_input_args(settings.input_method, params, 1, 1)  # value checks independent of the span length
    refused = (
        ("--llm-method (in-LLM pruning)", settings.llm_method is not None),
        ("--buckets", bool(settings.buckets)),
        ("--dtype fp16/bf16", settings.precision.dtype not in (None, "fp32")),
        ("--quantize", settings.precision.quantize is not None),
        ("--select-layer", settings.select_layer is not None),
    )
    for what, given in refused:
        if given:
            raise UsageError(f"selection at the LLM input ({settings.input_method}) with {what} is not supported yet")
    return settings
