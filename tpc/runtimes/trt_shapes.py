"""Shape logic of the TensorRT runtime, as pure functions (testable without a GPU)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from tpc.errors import ArtifactError, UsageError

_TERM = re.compile(r"^\s*([A-Za-z_]\w*|\d+)\s*$")


def profile_fits(profile: dict, shapes: Mapping[str, Sequence[int]]) -> bool:
    for name, shape in shapes.items():
        bounds = profile["shapes"].get(name)
        if bounds is None or len(bounds["min"]) != len(shape):
            return False
        if any(not lo <= v <= hi for v, lo, hi in zip(shape, bounds["min"], bounds["max"], strict=True)):
            return False
    return True


def select_profile(profiles: list[dict], shapes: Mapping[str, Sequence[int]]) -> int:
    """Index of the first optimization profile whose ranges hold every input shape."""
    for index, profile in enumerate(profiles):
        if profile_fits(profile, shapes):
            return index
    described = ", ".join(
        f"{n}={list(s)}"
        for n, s in shapes.items()
        if n in ("inputs_embeds", "attention_mask", "past_key_0", "pixel_values", "input_ids", "image_features")
    )
    names = ", ".join(p["name"] for p in profiles)
    raise UsageError(
        f"no optimization profile ({names}) covers {described}; rebuild with larger limits "
        "(--max-batch, --max-prompt-tokens, --max-context)"
    )


def bind_symbols(signature: list[dict], shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """Values of the symbolic dims (``batch``, ``seq``...) given concrete input shapes."""
    bindings: dict[str, int] = {}
    for value in signature:
        shape = shapes.get(value["name"])
        if shape is None:
            continue
        for dim, actual in zip(value["shape"], shape, strict=False):
            if isinstance(dim, str) and _TERM.match(dim):
                bindings.setdefault(dim.strip(), int(actual))
    return bindings


def resolve_shape(shape: Sequence[int | str], bindings: Mapping[str, int]) -> tuple[int, ...]:
    """Evaluate a manifest shape such as ``["batch", 2, "past_seq + seq", 16]``."""
    out = []
    for dim in shape:
        if isinstance(dim, int):
            out.append(dim)
            continue
        total = 0
        for term in dim.split("+"):
            match = _TERM.match(term)
            if not match:
                raise ArtifactError(f"cannot evaluate dimension {dim!r}")
            token = match.group(1)
            if token.isdigit():
                total += int(token)
            elif token in bindings:
                total += bindings[token]
            else:
                raise ArtifactError(f"dimension {dim!r}: {token!r} is not bound by the inputs")
        out.append(total)
    return tuple(out)


def output_shapes(graph: dict, shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Concrete output shapes of a manifest graph for the given input shapes."""
    bindings = bind_symbols(graph["inputs"], shapes)
    return {o["name"]: resolve_shape(o["shape"], bindings) for o in graph["outputs"]}


def max_output_shapes(graph: dict, profile: dict) -> dict[str, tuple[int, ...]]:
    """Output buffer sizes that hold every shape the profile admits (allocate once)."""
    return output_shapes(graph, {name: r["max"] for name, r in profile["shapes"].items()})


def check_engine_compat(recorded: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """Refuse engines built for another GPU (compute capability) or TensorRT version."""
    if not recorded:
        raise ArtifactError("this artifact has no built engines; run `tpc build ARTIFACT` on the target GPU")
    if recorded.get("tensorrt_version") != current.get("tensorrt_version"):
        raise ArtifactError(
            f"engines were built with TensorRT {recorded.get('tensorrt_version')}, this machine has "
            f"{current.get('tensorrt_version')}; rebuild them here with `tpc build`"
        )
    if recorded.get("compute_capability") != current.get("compute_capability") or recorded.get(
        "gpu_name"
    ) != current.get("gpu_name"):
        raise ArtifactError(
            f"engines were built for {recorded.get('gpu_name')} (sm {recorded.get('compute_capability')}),"
            f" this GPU is {current.get('gpu_name')} (sm {current.get('compute_capability')}); "
            "rebuild them here with `tpc build`"
        )
