"""Whether a reduced-precision check that runs graphs whole fits this host, before it is attempted.

ONNX Runtime's CPU provider has no fast half-precision kernels: it holds a half-precision graph's
weights in fp32. The decoders are checked a few layers at a time (the flat one, and in-LLM pruning's
staged segments one after another: ``verify_segments.py``); the other graphs (vision tower, embedding,
selectors) run whole. Rather than let the operating system kill the compile part-way, compile measures
what those would hold and refuses in one line when the host's available memory is short, naming
``--no-verify`` (the export itself fits).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from tpc.errors import UsageError

_FLOAT_BYTES = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2}
HEADROOM = 1.25  # activations, KV caches, sessions' own buffers on top of the weights


def fp32_weight_bytes(path: Path) -> int:
    """The bytes of a graph's initializers once ONNX Runtime's CPU provider holds its float ones in fp32."""
    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for init in model.graph.initializer:
        count = int(np.prod(init.dims, dtype=np.int64))
        total += count * (4 if init.data_type in _FLOAT_BYTES else _itemsize(init.data_type))
    return total


def _itemsize(data_type: int) -> int:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except (KeyError, TypeError, ValueError):  # strings and other exotic types: not what fills memory
        return 1


def available_bytes() -> int | None:
    """``MemAvailable`` of /proc/meminfo (None where there is none: the check is then not refused)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def ensure_whole_graphs_fit(paths: list[Path], what: str) -> int:
    """Refuse (UsageError) when running ``paths`` whole at once would not fit; returns the bytes needed."""
    need = int(HEADROOM * sum(fp32_weight_bytes(p) for p in paths))
    free = available_bytes()
    if free is not None and need > free:
        raise UsageError(
            f"checking {what} needs about {need / 2**30:.1f} GiB (ONNX Runtime's CPU provider holds the weights "
            f"in fp32) and this host has {free / 2**30:.1f} GiB available: compile with --no-verify (the export "
            "fits), or on a host with more memory"
        )
    return need
