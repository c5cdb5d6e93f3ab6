"""A cache of compiled artifacts keyed by model, method and settings (for sweeps)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tpc.compiler.pipeline import CompileSettings, compile_model
from tpc.errors import ArtifactError
from tpc.manifest import load_artifact

DEFAULT_CACHE = Path(os.environ.get("TPC_CACHE_DIR", Path.home() / ".cache" / "tpc" / "artifacts"))


def cache_key(settings: CompileSettings) -> str:
    import tpc

    model = settings.model
    if Path(model).is_dir():  # a local checkpoint: key on its resolved path and config contents
        config = Path(model, "config.json")
        model = f"{Path(model).resolve()}:{hashlib.sha256(config.read_bytes()).hexdigest() if config.exists() else ''}"
    fields = {
        "model": model,
        "method": settings.method or "default",
        "method_args": settings.method_args,
        "ratio": settings.ratio if settings.keep is None else None,
        "keep": settings.keep,
        "target": settings.target,
        "tpc": tpc.__version__,
    }
    if settings.llm_method or settings.select_layer is not None:  # keys of plain artifacts stay as they were
        fields.update(
            llm_method=settings.llm_method,
            llm_method_args=settings.llm_method_args,
            llm_ratio=settings.llm_ratio,
            select_layer=settings.select_layer,
        )
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def cached_compile(settings: CompileSettings, cache_dir: Path | None = None, progress=None) -> tuple[Path, bool]:
    """Path of an artifact for ``settings``, compiled only if the cache lacks a valid one.

    Returns (path, reused). A cached artifact that fails its hash check is rebuilt.
    """
    cache_dir = Path(cache_dir or DEFAULT_CACHE)
    name = Path(settings.model).name
    budget = f"k{settings.keep}" if settings.keep is not None else f"r{settings.ratio or 0}"
    path = cache_dir / f"{name}-{settings.method or 'default'}-{budget}-{settings.target}-{cache_key(settings)}"
    if path.exists():
        try:
            load_artifact(path)
            return path, True
        except ArtifactError:
            pass
    settings.output, settings.force = path, True
    return compile_model(settings, progress), False
