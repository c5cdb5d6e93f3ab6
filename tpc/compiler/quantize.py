"""Weight-only quantization of exported ONNX graphs into ``com.microsoft.MatMulNBits``.

What is quantized: every ``MatMul`` whose weight (input B) is a constant initializer, i.e. the
``nn.Linear`` layers of the exported graphs. Their weights are stored as 4- or 8-bit integers
in blocks of ``block_size`` values along K, with one scale per block (and one zero point per
block when asymmetric); the activations keep their dtype (fp32 or fp16) and MatMulNBits
dequantizes, or with ``accuracy_level`` 4 quantizes the activations to int8 and runs an int8
GEMM, inside the kernel. MatMuls of two activations (attention scores, attention x values)
have no constant weight and stay ``MatMul``.

``torch.onnx.export(dynamo=True)`` writes a Linear with a 2-D input as ``Gemm(x, W, b,
transB=1)`` (and one with a 3-D input as ``MatMul`` on a pre-transposed initializer plus
``Add``). ONNX Runtime's quantizer only rewrites ``MatMul``, so a plain Gemm (``transA=0``,
``alpha=beta=1``, constant 2-D B) is first split into ``MatMul(x, W^T)`` + ``Add(b)``. Any
constant-weight op that is left unquantized is named in the stats.

Why ONNX Runtime's own tool (``onnxruntime.quantization.matmul_nbits_quantizer``): the packed
layout of MatMulNBits (blob order, nibble order, zero-point packing) belongs to ONNX Runtime,
and its quantizer calls the same C++ routines as the kernels that read it, so the graph runs
on every execution provider that implements MatMulNBits without a layout of our own to keep
in sync. The ``DEFAULT`` configuration (round-to-nearest, block-wise, no calibration data) is
the one that supports 4 and 8 bits, symmetric and asymmetric, blocks of 16 to 256 and the
accuracy level; the RTN/GPTQ configurations go through neural-compressor and are 4-bit only.

Weights are read from and written to one external data file (``<name>.onnx.data``), so a
model over 2 GB is never serialized as a single protobuf.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from tpc.errors import UsageError
from tpc.onnx_graph import unique_name

log = logging.getLogger(__name__)

QUANTIZE_CHOICES = {"int4": 4, "int8": 8}
BLOCK_SIZES = (16, 32, 64, 128, 256)  # what ORT's blockwise quantizer (MLAS) accepts
ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # unset, fp32, fp16, bf16, int8 compute
EXTERNAL_DATA_THRESHOLD = 1024  # bytes; smaller tensors stay inside the .onnx
_QUANTIZER_MODULE = "onnxruntime.quantization.matmul_nbits_quantizer"


@dataclass(frozen=True)
class QuantizeSettings:
    """How to quantize: ``bits`` 4 or 8, a block of ``block_size`` weights per scale."""

    bits: int  # 4 or 8
    block_size: int = 32  # power of two, 16 to 256 (ORT's quantizer rejects larger blocks)
    symmetric: bool = True
    accuracy_level: int = 4  # MatMulNBits accuracy_level: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 compute

    def check(self) -> None:
        """Raise ``UsageError`` (one line, naming the flag) for a value MatMulNBits cannot take."""
        if not _is_int(self.bits) or self.bits not in QUANTIZE_CHOICES.values():
            raise UsageError(f"--quantize must be int4 or int8 (got {self.bits!r} bits)")
        if not _is_int(self.block_size) or self.block_size not in BLOCK_SIZES:
            raise UsageError(f"--quant-block-size must be a power of two from 16 to 256 (got {self.block_size!r})")
        if not _is_int(self.accuracy_level) or self.accuracy_level not in ACCURACY_LEVELS:
            raise UsageError(
                "--quant-accuracy-level must be 0 (unset), 1 (fp32), 2 (fp16), 3 (bf16) or 4 (int8) "
                f"(got {self.accuracy_level!r})"
            )

    def as_dict(self) -> dict[str, Any]:
        """The manifest entry."""
        import onnxruntime

        return {
            "format": "MatMulNBits",
            "bits": self.bits,
            "block_size": self.block_size,
            "symmetric": self.symmetric,
            "accuracy_level": self.accuracy_level,
            "tool": f"onnxruntime.quantization {onnxruntime.__version__}",
        }


def parse_quantize(text: str | None) -> int | None:
    """``--quantize`` value -> bits: ``"int4"`` -> 4, ``"int8"`` -> 8, ``None`` -> ``None``."""
    if text is None:
        return None
    bits = QUANTIZE_CHOICES.get(text.strip().lower())
    if bits is None:
        raise UsageError(f"--quantize must be int4 or int8 (got {text!r})")
    return bits


def quantize_graph(
    src: Path, dst: Path, settings: QuantizeSettings, rewrite: Callable[[onnx.ModelProto], dict] | None = None
) -> dict[str, Any]:
    """Quantize every MatMul whose weight (input B) is a 2-D constant initializer into MatMulNBits.

    Writes ``dst`` with its weights in one external data file ``dst.name + '.data'`` (``dst`` may
    be ``src``). Returns the stats: ``matmuls`` (MatMul nodes in src), ``gemms`` (Gemm nodes in
    src), ``quantized`` (MatMulNBits nodes made), ``activation_matmuls`` (MatMuls of two
    activations, kept), ``skipped`` (node -> why, for every other MatMul or Gemm left
    unquantized; empty for a graph of Linear layers), ``bytes_before`` / ``bytes_after`` (the
    .onnx plus its external data files). ``rewrite(model)``: graph passes run in place before the
    quantizer (the decoder passes of ``tpc/passes/onnx_decoder.py``); what it returns is ``rewrites``.
    """
    settings.check()
    src, dst = Path(src), Path(dst)
    model, src_files = _load(src)
    bytes_before = _size(src, src_files)  # before the write: dst may be src
    before = Counter(node.op_type for node in _nodes(model.graph))
    split = _split_gemms(model.graph)
    rewrites = rewrite(model) if rewrite is not None else None
    model = _run_quantizer(model, settings)
    after = Counter(node.op_type for node in _nodes(model.graph))
    activation, skipped = _leftovers(model.graph)
    _save(model, dst)
    stats = {
        "matmuls": before["MatMul"],
        "gemms": before["Gemm"],
        "quantized": after["MatMulNBits"] - before["MatMulNBits"],
        "activation_matmuls": activation,
        "skipped": skipped,
        "bytes_before": bytes_before,
        "bytes_after": _size(dst, _external_files(dst)),
        **({"rewrites": rewrites} if rewrites is not None else {}),
    }
    log.info(
        "%s: %d MatMulNBits from %d MatMul and %d Gemm (%d split), %d skipped",
        dst.name,
        stats["quantized"],
        before["MatMul"],
        before["Gemm"],
        split,
        len(skipped),
    )
    return stats


# --- loading and saving -------------------------------------------------------------------------


def _load(path: Path) -> tuple[onnx.ModelProto, set[str]]:
    """The model with its external data in memory, and the names of its external data files."""
    model = onnx.load(str(path), load_external_data=False)
    files = _locations(model)
    onnx.load_external_data_for_model(model, str(path.parent))
    return model, files


def _save(model: onnx.ModelProto, dst: Path) -> None:
    """Write into a fresh folder next to ``dst``, then move over the stale ``dst`` and its data."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    data = dst.with_name(dst.name + ".data")
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quantize-") as tmp:
        fresh = Path(tmp) / dst.name
        _externalize(model, data.name)
        onnx.save_model(model, str(fresh))  # writes the tensors marked external next to ``fresh``
        for stale in (dst, data):
            stale.unlink(missing_ok=True)
        written = Path(tmp) / data.name
        if written.exists():
            written.chmod(fresh.stat().st_mode & 0o777)  # onnx creates it 0600; give it the umask's mode
            os.replace(written, data)
        os.replace(fresh, dst)


def _externalize(model: onnx.ModelProto, location: str) -> None:
    """Mark every initializer of ``EXTERNAL_DATA_THRESHOLD`` bytes or more to go to ``location``.

    What ``onnx.save_model(save_as_external_data=True, all_tensors_to_one_file=True)`` does,
    without its check that ``location`` does not exist relative to the *working directory*.
    """
    for graph in _graphs(model.graph):
        for tensor in graph.initializer:
            if tensor.HasField("raw_data") and len(tensor.raw_data) >= EXTERNAL_DATA_THRESHOLD:
                external_data_helper.set_external_data(tensor, location)


def _locations(model: onnx.ModelProto) -> set[str]:
    """The external data files (relative paths) that the tensors of ``model`` point into."""
    return {
        entry.value
        for tensor in _tensors(model.graph)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }


def _tensors(root: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and Constant / attribute tensors of ``root`` and its subgraphs."""
    for graph in _graphs(root):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                yield from attr.tensors


def _external_files(path: Path) -> set[str]:
    return _locations(onnx.load(str(path), load_external_data=False))


def _size(path: Path, files: set[str]) -> int:
    return path.stat().st_size + sum((path.parent / name).stat().st_size for name in files)


# --- graph passes -------------------------------------------------------------------------------


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """The nodes of ``graph`` and of its subgraphs (If / Loop / Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                yield from _nodes(sub)


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                yield from _graphs(sub)


def _split_gemms(root: onnx.GraphProto) -> int:
    """Rewrite each plain ``Gemm(x, W, b)`` with a constant 2-D W as ``MatMul(x, W')`` + ``Add(b)``.

    Plain: ``transA=0``, ``alpha=beta=1``. ``W'`` is W, or W transposed for ``transB=1``, as a
    new initializer (shared between Gemms that share W). Returns how many Gemms were split.
    """
    split = 0
    for graph in _graphs(root):
        weights = {init.name: init for init in graph.initializer}
        taken = {name for node in graph.node for name in node.output} | set(weights)
        transposed: dict[str, str] = {}
        nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            if node.op_type != "Gemm" or not _plain_gemm(node, weights):
                nodes.append(node)
                continue
            weight = _matmul_weight(node, weights, transposed, taken, graph)
            nodes.extend(_gemm_as_matmul(node, weight, taken))
            split += 1
        graph.ClearField("node")
        graph.node.extend(nodes)
    return split


def _plain_gemm(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> bool:
    attrs = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
    weight = weights.get(node.input[1])
    return (
        attrs.get("transA", 0) == 0
        and attrs.get("alpha", 1.0) == 1.0
        and (attrs.get("beta", 1.0) == 1.0 or len(node.input) < 3 or not node.input[2])
        and weight is not None
        and len(weight.dims) == 2
    )


def _matmul_weight(
    node: onnx.NodeProto,
    weights: dict[str, onnx.TensorProto],
    transposed: dict[str, str],
    taken: set[str],
    graph: onnx.GraphProto,
) -> str:
    """The initializer that is B of the MatMul: the Gemm's B, or its transpose for ``transB=1``."""
    name = node.input[1]
    trans_b = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "transB"), 0)
    if not trans_b:
        return name
    if name not in transposed:
        array = np.ascontiguousarray(numpy_helper.to_array(weights[name]).T)
        transposed[name] = unique_name(f"{name}_transposed", taken)
        graph.initializer.append(numpy_helper.from_array(array, transposed[name]))
    return transposed[name]


def _gemm_as_matmul(node: onnx.NodeProto, weight: str, taken: set[str]) -> list[onnx.NodeProto]:
    name = node.name or node.output[0]
    bias = node.input[2] if len(node.input) > 2 else ""
    if not bias:
        return [onnx.helper.make_node("MatMul", [node.input[0], weight], list(node.output), name=name)]
    product = unique_name(f"{node.output[0]}_matmul", taken)
    return [
        onnx.helper.make_node("MatMul", [node.input[0], weight], [product], name=f"{name}_matmul"),
        onnx.helper.make_node("Add", [product, bias], list(node.output), name=f"{name}_bias"),
    ]


def _run_quantizer(model: onnx.ModelProto, settings: QuantizeSettings) -> onnx.ModelProto:
    nbits = _quantizer_module()
    config = nbits.DefaultWeightOnlyQuantConfig(
        block_size=settings.block_size,
        is_symmetric=settings.symmetric,
        accuracy_level=settings.accuracy_level,  # 0: the quantizer leaves the attribute out
        bits=settings.bits,
        op_types_to_quantize=("MatMul",),
    )
    quantizer = nbits.MatMulNBitsQuantizer(
        model,
        bits=settings.bits,
        block_size=settings.block_size,
        is_symmetric=settings.symmetric,
        accuracy_level=settings.accuracy_level,
        algo_config=config,
    )
    quantizer.process()
    return quantizer.model.model


def _quantizer_module() -> Any:
    """Import ORT's quantizer without its side effect: it calls ``logging.basicConfig(level=INFO)``."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization import matmul_nbits_quantizer

    root.handlers[:] = handlers
    root.setLevel(level)
    chatter = logging.getLogger(_QUANTIZER_MODULE)  # two INFO lines per node
    if chatter.level == logging.NOTSET:
        chatter.setLevel(logging.WARNING)
    return matmul_nbits_quantizer


def _leftovers(root: onnx.GraphProto) -> tuple[int, dict[str, str]]:
    """(MatMuls of two activations, {node: why} for constant-weight MatMul/Gemm left unquantized)."""
    activation = 0
    skipped: dict[str, str] = {}
    for graph in _graphs(root):
        weights = {init.name: init for init in graph.initializer}
        constants = {out for node in graph.node if node.op_type == "Constant" for out in node.output}
        for node in graph.node:
            if node.op_type not in ("MatMul", "Gemm"):
                continue
            b = node.input[1]
            if b in weights:
                why = f"{node.op_type} weight of shape {list(weights[b].dims)}"
                if node.op_type == "Gemm":
                    why += " with transA=1, alpha != 1 or beta != 1"
            elif b in constants:
                why = f"{node.op_type} weight is a Constant node, not an initializer"
            elif node.op_type == "MatMul":
                activation += 1
                continue
            else:
                why = "Gemm with a computed weight"
            skipped[node.name or node.output[0]] = why
    return activation, skipped


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
