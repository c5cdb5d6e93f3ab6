"""The image layout of an artifact, from its manifest's ``runtime.image_layout.kind`` (torch-free).

* ``single`` and ``anyres``: crops on the vision graph's batch axis (``tpc.runtimes.image_layout``);
* ``grid``: a vision graph per compiled image grid (Qwen2.5-VL, ``tpc.runtimes.grid_layout``).
"""

from __future__ import annotations

from pathlib import Path

from tpc.runtimes.grid_layout import GridLayout
from tpc.runtimes.image_layout import AnyResLayout, SingleCropLayout

LAYOUTS = {"single": SingleCropLayout, "anyres": AnyResLayout, "grid": GridLayout}


def image_layout(runtime: dict, root: Path):
    kind = runtime.get("image_layout", {}).get("kind", "single")
    return LAYOUTS[kind](runtime, root)
