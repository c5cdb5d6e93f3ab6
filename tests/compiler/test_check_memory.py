"""A reduced-precision check that would run graphs whole beyond this host's memory is refused before it runs.

ONNX Runtime's CPU provider holds half-precision weights in fp32. The decoders (flat, or in-LLM pruning's
segments) run a few layers at a time; the graphs that still run whole are measured and, when the host is
short, compile refuses in one line naming ``--no-verify``, leaving no artifact directory, instead of being
killed part-way.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import tpc.compiler.check_memory as check_memory
from tests.conftest import run_cli
from tpc.compiler.check_memory import ensure_whole_graphs_fit, fp32_weight_bytes
from tpc.errors import UsageError


def _graph(tmp_path, name: str, dtype) -> object:
    weights = onnx.numpy_helper.from_array(np.zeros((100, 10), dtype), "w")
    ids = onnx.numpy_helper.from_array(np.zeros(7, np.int64), "ids")
    x = onnx.helper.make_tensor_value_info("x", onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), [2, 100])
    y = onnx.helper.make_tensor_value_info("y", onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), [2, 10])
    graph = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [weights, ids])
    path = tmp_path / name
    onnx.save(onnx.helper.make_model(graph), str(path))
    return path


def test_half_precision_weights_count_as_fp32(tmp_path):
    assert fp32_weight_bytes(_graph(tmp_path, "h.onnx", np.float16)) == 1000 * 4 + 7 * 8
    assert fp32_weight_bytes(_graph(tmp_path, "f.onnx", np.float32)) == 1000 * 4 + 7 * 8


def test_refused_when_short_and_run_when_it_fits(tmp_path, monkeypatch):
    paths = [_graph(tmp_path, "a.onnx", np.float16), _graph(tmp_path, "b.onnx", np.float16)]
    monkeypatch.setattr(check_memory, "available_bytes", lambda: 1000)
    with pytest.raises(UsageError, match=r"needs about .* GiB .* compile with --no-verify"):
        ensure_whole_graphs_fit(paths, "the graphs")
    monkeypatch.setattr(check_memory, "available_bytes", lambda: 10**9)
    assert ensure_whole_graphs_fit(paths, "the graphs") == int(check_memory.HEADROOM * 2 * 4056)
    monkeypatch.setattr(check_memory, "available_bytes", lambda: None)  # no /proc/meminfo: not refused
    ensure_whole_graphs_fit(paths, "the graphs")


def test_in_llm_segments_are_not_run_whole_and_a_short_host_is_one_line(tmp_path, capsys, monkeypatch):
    asked = []
    real = check_memory.ensure_whole_graphs_fit
    monkeypatch.setattr(
        check_memory, "ensure_whole_graphs_fit", lambda paths, what: asked.extend(paths) or real(paths, what)
    )
    out = tmp_path / "t"
    argv = ["compile", "llava-tiny", "--method", "fastv", "--method-arg", "layer=2", "--ratio", "0.75"]
    code, _, err = run_cli([*argv, "--target", "trt", "--no-build", "-o", str(out)], capsys)
    assert code == 0, err
    assert asked and not [p for p in asked if p.name.startswith("decoder")]  # segments run piece by piece
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verification"]["decoder"]["run"].startswith("staged, 2 segments in ")
    monkeypatch.setattr(check_memory, "available_bytes", lambda: 1000)
    out = tmp_path / "u"
    code, _, err = run_cli([*argv, "--target", "trt", "--no-build", "-o", str(out)], capsys)
    assert code != 0 and "compile with --no-verify" in err and "Traceback" not in err
    assert len([line for line in err.strip().splitlines() if "error" in line.lower()]) == 1
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".u.tmp")]
    code, _, err = run_cli([*argv, "--target", "trt", "--no-build", "--no-verify", "-o", str(out)], capsys)
    assert code == 0, err  # the export alone fits
