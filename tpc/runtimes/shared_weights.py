"""One copy in memory of the weights several graphs share (the grid families' vision graphs).

A grid family's artifact has one vision graph per compiled grid, all pointing at one file of
distinct tensors (``vision.weights``). Loaded as separate ONNX Runtime sessions, each would read
its own copy of every weight. Here the file is memory-mapped once and every session gets its
tensors as user-owned initializers (``SessionOptions.add_initializer``): views into the same
mapping, so the weights occupy memory once whatever the number of grids. ONNX Runtime's weight
pre-packing would make a private packed copy per session, so it is turned off for those
sessions (``session.disable_prepacking``); ``benchmarks/qwen_bench.py`` reports what that costs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tpc.artifact_layout import SHARED_VISION_WEIGHTS


class SharedWeights:
    """The memory-mapped shared weights file of an artifact, and the initializers each graph takes from it."""

    def __init__(self, path: Path, models: dict | None = None):
        self.path = Path(path)
        self.mapping = np.memmap(self.path, dtype=np.uint8, mode="r")
        self._models = dict(models or {})  # graph path -> its proto (no weights), read once by ``of``
        self._values: list = []  # the OrtValues must outlive the sessions that use them

    @classmethod
    def of(cls, paths: dict[str, Path]) -> SharedWeights | None:
        """The shared file when two or more graphs of ``paths`` read it, else None."""
        import onnx

        candidates = [p for p in paths.values() if (p.parent / SHARED_VISION_WEIGHTS).is_file()]
        models = {p: onnx.load(str(p), load_external_data=False) for p in candidates}
        users = {p: m for p, m in models.items() if _reads_shared(m)}
        return cls(next(iter(users)).parent / SHARED_VISION_WEIGHTS, users) if len(users) >= 2 else None

    def attach(self, graph: Path, options) -> int:
        """Give ``options`` every tensor ``graph`` reads from the shared file; returns how many."""
        import onnx
        import onnxruntime as ort

        model = self._models.get(graph)
        if model is None:  # ``of`` found no shared tensor in it
            return 0
        count = 0
        for tensor in model.graph.initializer:
            info = _external(tensor)
            if info is None or info.get("location") != self.path.name:
                continue
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
            offset, length = int(info.get("offset", 0)), int(info["length"])
            array = np.frombuffer(self.mapping, dtype=dtype, count=length // dtype.itemsize, offset=offset)
            value = ort.OrtValue.ortvalue_from_numpy(array.reshape(tuple(tensor.dims)))
            self._values.append(value)
            options.add_initializer(tensor.name, value)
            count += 1
        if count:
            options.add_session_config_entry("session.disable_prepacking", "1")
        return count


def _external(tensor) -> dict | None:
    import onnx

    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    return {entry.key: entry.value for entry in tensor.external_data}


def _reads_shared(model) -> bool:
    return any((_external(t) or {}).get("location") == SHARED_VISION_WEIGHTS for t in model.graph.initializer)
