"""Export keeps one copy of a half-precision checkpoint's weights in memory (a peak-memory test, not timed).

A checkpoint deeper and wider than the tiny presets (20 decoder layers, 1024 wide: ~520 MB of
fp16 weights) compiles in its own process to fp16 ONNX. The bound: the compile's peak resident
memory stays below the same interpreter's peak after loading the checkpoint and touching every
weight, plus half of the weights' bytes. A second copy of the weights anywhere in load, trace and
export (an fp32 upcast, an in-memory ONNX proto holding the initializers) would cost their full
size. The agreement check's memory (the fp32 reference's outputs first, the model freed, then
the decoder graph a few layers at a time) is measured at the 7 B size by
``benchmarks/real_size_bench.py``; at this size its fixed costs (ONNX Runtime sessions,
allocator caches) dominate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from tpc.models.presets import PRESETS, build_preset

BASELINE = """
import json, sys
import onnx, onnxruntime, onnxscript, torch  # what compile imports too
import tpc.compiler.pipeline
from tpc.models import load_model
from tpc.profiling.profiler import peak_memory_mb
loaded = load_model(sys.argv[1], "auto")
total = sum(float(p.float().sum()) for p in loaded.model.parameters())  # every weight touched once
size = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
print(json.dumps({"peak_mb": peak_memory_mb(), "bytes": size}))
"""


@pytest.fixture(scope="module")
def deep_checkpoint(tmp_path_factory):
    import torch

    base = PRESETS["llava-tiny"]
    text = dict(
        base.text,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=20,
        num_attention_heads=16,
        num_key_value_heads=16,
    )
    model, processor = build_preset(replace(base, name="deep", text=text))
    root = tmp_path_factory.mktemp("deep-fp16")
    model.to(torch.float16).save_pretrained(root)
    processor.save_pretrained(root)
    return root


def _baseline(checkpoint) -> dict:
    done = subprocess.run([sys.executable, "-c", BASELINE, str(checkpoint)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_half_precision_export_holds_one_copy_of_the_weights(deep_checkpoint, tmp_path):
    baseline = _baseline(deep_checkpoint)
    assert baseline["bytes"] > 500e6  # big enough that a second copy stands out of the interpreter's noise
    out = tmp_path / "artifact"
    cmd = [sys.executable, "-m", "tpc.cli", "compile", str(deep_checkpoint), "--ratio", "0.5", "--target", "onnx"]
    cmd += ["-o", str(out), "-q", "--no-verify"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"]["dtype"] == "fp16"
    assert manifest["verification"] == {"skipped": True}
    bound = baseline["peak_mb"] + 0.5 * baseline["bytes"] / 2**20
    assert manifest["compile_peak_memory_mb"] < bound, (manifest["compile_peak_memory_mb"], baseline)
