"""Weight-only MatMulNBits quantization of dynamo-exported graphs (tpc.compiler.quantize), on ORT CPU."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tpc.compiler.quantize import QuantizeSettings, parse_quantize, quantize_graph
from tpc.errors import UsageError

# Relative error of the output (Frobenius) against the unquantized graph, 3 random Linear layers.
# Measured over 12 seeds with accuracy_level 4: int4 0.10 (max 0.12), int8 0.011 (max 0.012; the
# int8 activations of accuracy_level 4 double the 0.006 of int8 weights alone).
MAX_ERROR = {4: 0.15, 8: 0.02}
DTYPES = {"float32": torch.float32, "float16": torch.float16}


class Attention(nn.Module):
    """One head of self-attention: two activation x activation MatMuls among four Linears."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64)
        self.out = nn.Linear(64, 64, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(-1, -2) / 8.0
        return self.out(torch.softmax(scores, dim=-1) @ self.v(x))


def mlp() -> nn.Module:
    """Weights dominate: 114k weights, 320 biases."""
    return nn.Sequential(nn.Linear(128, 256, bias=False), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 64))


def export(module: nn.Module, x: torch.Tensor, path: Path) -> Path:
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), str(path), dynamo=True, external_data=True)
    return path


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """graph(kind, dtype) -> (path of the exported .onnx, its input); exported once per module.

    ``mlp3d`` takes [2, 8, 128] (dynamo writes MatMul on a transposed initializer + Add), ``mlp2d``
    takes [4, 128] (dynamo writes Gemm with transB=1), ``attention`` takes [2, 8, 64].
    """
    root = tmp_path_factory.mktemp("quantize-src")
    built: dict[tuple[str, str], tuple[Path, np.ndarray]] = {}

    def get(kind: str, dtype: str = "float32") -> tuple[Path, np.ndarray]:
        if (kind, dtype) not in built:
            torch.manual_seed(0)
            module = Attention() if kind == "attention" else mlp()
            shape = {"mlp3d": (2, 8, 128), "mlp2d": (4, 128), "attention": (2, 8, 64)}[kind]
            x = torch.randn(*shape).to(DTYPES[dtype])
            path = export(module.to(DTYPES[dtype]), x, root / f"{kind}-{dtype}.onnx")
            built[kind, dtype] = (path, x.numpy())
        return built[kind, dtype]

    return get


def run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    want = want.astype(np.float64)
    return float(np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want))


def load(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=False)


def initializers(model: onnx.ModelProto) -> dict[str, TensorProto]:
    return {init.name: init for init in model.graph.initializer}


def nodes(model: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.op_type == op_type]


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def constant_weight_ops(model: onnx.ModelProto) -> list[str]:
    """MatMul / Gemm nodes whose B is an initializer: what quantization should leave none of."""
    weights = initializers(model)
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]


# --- 1. int4 / int8 of fp32 / fp16 graphs, MatMul and Gemm exports -------------------------------


@pytest.mark.parametrize("kind", ["mlp3d", "mlp2d"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("bits", [4, 8])
def test_linear_layers_become_matmulnbits_and_stay_close(graph, tmp_path, kind, dtype, bits):
    src, x = graph(kind, dtype)
    dst = tmp_path / "q.onnx"
    stats = quantize_graph(src, dst, QuantizeSettings(bits=bits))

    source, model = load(src), load(dst)
    exported = "MatMul" if kind == "mlp3d" else "Gemm"  # what dynamo made of nn.Linear
    assert len(nodes(source, exported)) == 3
    assert stats["matmuls"] == len(nodes(source, "MatMul")) and stats["gemms"] == len(nodes(source, "Gemm"))
    assert stats["quantized"] == 3 and stats["activation_matmuls"] == 0 and stats["skipped"] == {}

    quantized = nodes(model, "MatMulNBits")
    assert len(quantized) == 3 and constant_weight_ops(model) == []
    weights = initializers(model)
    for node in quantized:
        assert node.domain == "com.microsoft"
        assert attrs(node)["bits"] == bits and attrs(node)["block_size"] == 32 and attrs(node)["accuracy_level"] == 4
        # the activations keep their dtype: the scales are fp16 for an fp16 graph
        assert weights[node.input[2]].data_type == helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    assert model.graph.output[0].type.tensor_type.elem_type == source.graph.output[0].type.tensor_type.elem_type

    got, want = run(dst, x), run(src, x)
    assert got.dtype == want.dtype == np.dtype(dtype)
    assert relative_error(got, want) < MAX_ERROR[bits]

    # bytes per weight: bits/8 for the values + one scale per block of 32, against 2 or 4 before
    per_weight = (bits / 8 + np.dtype(dtype).itemsize / 32) / np.dtype(dtype).itemsize
    ratio = stats["bytes_after"] / stats["bytes_before"]
    assert ratio < per_weight * 1.15
    if bits == 4:
        assert ratio <= 0.35
    assert stats["bytes_before"] == src.stat().st_size + Path(f"{src}.data").stat().st_size
    assert stats["bytes_after"] == dst.stat().st_size + Path(f"{dst}.data").stat().st_size


# --- 2. symmetric / asymmetric, block sizes, accuracy level ---------------------------------------


def test_asymmetric_adds_zero_points(graph, tmp_path):
    src, x = graph("mlp3d")
    sym, asym = tmp_path / "sym.onnx", tmp_path / "asym.onnx"
    quantize_graph(src, sym, QuantizeSettings(bits=4, symmetric=True))
    quantize_graph(src, asym, QuantizeSettings(bits=4, symmetric=False))

    assert all(len(node.input) == 3 for node in nodes(load(sym), "MatMulNBits"))
    model = load(asym)
    weights = initializers(model)
    for node in nodes(model, "MatMulNBits"):
        assert len(node.input) == 4
        zero_points = weights[node.input[3]]
        n, k = attrs(node)["N"], attrs(node)["K"]
        assert zero_points.data_type == TensorProto.UINT8
        assert list(zero_points.dims) == [n, (k // 32 + 1) // 2]  # two 4-bit zero points a byte
    assert relative_error(run(asym, x), run(src, x)) < MAX_ERROR[4]


def test_block_size_sets_the_scales_shape(graph, tmp_path):
    src, x = graph("mlp3d")
    shapes = {}
    for block in (16, 64):
        dst = tmp_path / f"b{block}.onnx"
        quantize_graph(src, dst, QuantizeSettings(bits=4, block_size=block))
        model = load(dst)
        weights = initializers(model)
        for node in nodes(model, "MatMulNBits"):
            assert attrs(node)["block_size"] == block
            assert list(weights[node.input[1]].dims) == [attrs(node)["N"], attrs(node)["K"] // block, block // 2]
        shapes[block] = [list(weights[node.input[2]].dims) for node in nodes(model, "MatMulNBits")]
        assert relative_error(run(dst, x), run(src, x)) < MAX_ERROR[4]
    # [N, K / block] for K = 128, 256, 256
    assert shapes == {16: [[256, 8], [256, 16], [64, 16]], 64: [[256, 2], [256, 4], [64, 4]]}


def test_accuracy_level_zero_leaves_the_attribute_out(graph, tmp_path):
    src, x = graph("mlp3d")
    dst = tmp_path / "q.onnx"
    quantize_graph(src, dst, QuantizeSettings(bits=8, accuracy_level=0))
    assert all("accuracy_level" not in attrs(node) for node in nodes(load(dst), "MatMulNBits"))
    assert relative_error(run(dst, x), run(src, x)) < 0.01  # fp32 compute: int8 weights alone


# --- 3. bad settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "flag"),
    [
        (QuantizeSettings(bits=3), "--quantize"),
        (QuantizeSettings(bits=2), "--quantize"),
        (QuantizeSettings(bits=4, block_size=24), "--quant-block-size"),
        (QuantizeSettings(bits=4, block_size=8), "--quant-block-size"),
        (QuantizeSettings(bits=4, block_size=512), "--quant-block-size"),  # ORT's quantizer stops at 256
        (QuantizeSettings(bits=4, accuracy_level=7), "--quant-accuracy-level"),
        (QuantizeSettings(bits=4, accuracy_level=-1), "--quant-accuracy-level"),
    ],
)
def test_bad_settings_are_one_line_usage_errors(tmp_path, settings, flag):
    with pytest.raises(UsageError) as error:
        settings.check()
    message = str(error.value)
    assert message.startswith(flag + " ") and "\n" not in message
    with pytest.raises(UsageError):  # checked before anything is read or written
        quantize_graph(tmp_path / "missing.onnx", tmp_path / "q.onnx", settings)
    assert list(tmp_path.iterdir()) == []


def test_parse_quantize():
    assert parse_quantize("int4") == 4 and parse_quantize("int8") == 8 and parse_quantize(None) is None
    for bad in ("int2", "int16", "fp8", ""):
        with pytest.raises(UsageError, match="^--quantize must be int4 or int8"):
            parse_quantize(bad)


def test_as_dict_names_the_tool():
    import onnxruntime

    settings = QuantizeSettings(bits=4)
    assert settings.as_dict() == {
        "format": "MatMulNBits",
        "bits": 4,
        "block_size": 32,
        "symmetric": True,
        "accuracy_level": 4,
        "tool": f"onnxruntime.quantization {onnxruntime.__version__}",
    }


# --- 4. what is not quantized -------------------------------------------------------------------


def test_activation_matmuls_stay_matmul(graph, tmp_path):
    src, x = graph("attention")
    dst = tmp_path / "q.onnx"
    stats = quantize_graph(src, dst, QuantizeSettings(bits=8))

    model = load(dst)
    assert stats["quantized"] == 4 and len(nodes(model, "MatMulNBits")) == 4
    assert stats["activation_matmuls"] == 2 and stats["skipped"] == {}
    kept = nodes(model, "MatMul")
    assert len(kept) == 2 and constant_weight_ops(model) == []  # scores and scores x values
    assert stats["matmuls"] == len(nodes(load(src), "MatMul")) == 6
    assert relative_error(run(dst, x), run(src, x)) < MAX_ERROR[8]


def test_plain_gemm_is_split_and_scaled_gemm_is_reported(tmp_path):
    """Gemm(transB=0) becomes MatMulNBits + Add; Gemm(alpha=0.5) is kept and named in ``skipped``."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((64, 64), np.float32), rng.standard_normal((64, 32), np.float32)
    bias = rng.standard_normal(64).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "bias"], ["h"], name="plain"),
            helper.make_node("Gemm", ["h", "w2"], ["y"], name="scaled", alpha=0.5),
        ],
        "gemms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(bias, "bias")],
    )
    src = tmp_path / "gemms.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.save_model(model, str(src), save_as_external_data=True, location="gemms.onnx.data", size_threshold=0)
    dst = tmp_path / "q.onnx"
    stats = quantize_graph(src, dst, QuantizeSettings(bits=8))

    assert stats["gemms"] == 2 and stats["quantized"] == 1
    assert list(stats["skipped"]) == ["scaled"] and "alpha" in stats["skipped"]["scaled"]
    quantized = load(dst)
    assert [n.op_type for n in quantized.graph.node] == ["MatMulNBits", "Add", "Gemm"]
    x = rng.standard_normal((3, 64), np.float32)
    assert relative_error(run(dst, x), run(src, x)) < MAX_ERROR[8]


# --- files --------------------------------------------------------------------------------------


def test_writes_one_data_file_over_stale_ones_and_in_place(graph, tmp_path):
    src, x = graph("mlp3d")
    dst = tmp_path / "q.onnx"
    Path(f"{dst}.data").write_bytes(b"\0" * 1_000_000)  # a stale, bigger data file
    dst.write_bytes(b"stale")
    quantize_graph(src, dst, QuantizeSettings(bits=4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx", "q.onnx.data"]
    model = load(dst)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"q.onnx.data"}
    assert Path(f"{dst}.data").stat().st_size < 100_000
    want = run(dst, x)

    folder = tmp_path / "in-place"  # dst is src
    folder.mkdir()
    copy = Path(shutil.copy(src, folder))
    shutil.copy(f"{src}.data", folder)
    stats = quantize_graph(copy, copy, QuantizeSettings(bits=4))
    assert stats["quantized"] == 3 and stats["bytes_after"] < stats["bytes_before"]
    assert np.array_equal(run(copy, x), want)
    assert sorted(p.name for p in folder.iterdir()) == [copy.name, copy.name + ".data"]


def test_import_loads_no_onnxruntime_and_leaves_the_root_logger_alone():
    """ORT's quantizer calls ``logging.basicConfig(level=INFO)`` when imported; a fresh process shows it."""
    code = (
        "import logging, sys; import tpc.compiler.quantize as q; "
        "assert 'onnxruntime' not in sys.modules; "
        "q._quantizer_module(); assert 'onnxruntime' in sys.modules; "
        "assert logging.getLogger().handlers == [] and logging.getLogger().level == logging.WARNING"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
