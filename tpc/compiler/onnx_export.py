"""ONNX export of the three graphs, with readable dimension names.

``torch.onnx.export(dynamo=True)`` names dynamic axes ``s10``, ``s29 + s69``...; the
exporter renames them (``batch``, ``seq``, ``past_seq + seq``) so that the manifest,
TensorRT profiles and users read the same names. Weights go to ``<graph>.onnx.data``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch

from tpc.errors import ExportError

log = logging.getLogger(__name__)

_SYMBOL = re.compile(r"\bs\d+\b")
# The exporter warns once per export that torchvision ops are not registered.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def export_onnx(
    module: torch.nn.Module,
    args: tuple,
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: Any,
    axis_names: dict[str, dict[int, str]],
    custom_translation_table: dict | None = None,
) -> Path:
    """Export ``module`` to ``path`` and rename its symbolic dims by ``axis_names``. ``custom_translation_table``
    (torch op -> ONNX function): graphs with ops of their own (``tpc.compiler.greedy_loop``)."""
    chatter = io.StringIO()  # the exporter prints its stages; keep them for -vv
    try:
        with torch.no_grad(), contextlib.redirect_stdout(chatter), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=True,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                custom_translation_table=custom_translation_table,
                optimize=True,
                external_data=True,
                verbose=False,
            )
    except Exception as exc:
        raise ExportError(f"ONNX export of {path.name} failed: {type(exc).__name__}: {_first(exc)}") from exc
    finally:
        log.debug("torch.onnx.export %s:\n%s", path.name, chatter.getvalue())
    rename_dims(path, axis_names)
    return path


def rename_dims(path: Path, axis_names: dict[str, dict[int, str]]) -> None:
    model = onnx.load(str(path), load_external_data=False)
    mapping: dict[str, str] = {}
    for value in model.graph.input:
        for axis, name in axis_names.get(value.name, {}).items():
            dim = value.type.tensor_type.shape.dim[axis]
            if dim.dim_param and _SYMBOL.fullmatch(dim.dim_param):
                mapping.setdefault(dim.dim_param, name)
    for value in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = _SYMBOL.sub(lambda m: mapping.get(m.group(0), m.group(0)), dim.dim_param)
    onnx.save(model, str(path))


def graph_signature(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Input/output names, shapes (ints or dim names) and dtypes of an ONNX file."""
    model = onnx.load(str(path), load_external_data=False)

    def describe(values):
        out = []
        for v in values:
            tt = v.type.tensor_type
            shape = [d.dim_param if d.dim_param else d.dim_value for d in tt.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
            out.append({"name": v.name, "shape": shape, "dtype": dtype})
        return out

    return {
        "inputs": describe(model.graph.input),
        "outputs": describe(model.graph.output),
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
    }


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""
