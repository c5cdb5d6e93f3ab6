"""Profile one artifact or a ratio sweep, with progress on the terminal."""

from __future__ import annotations

from pathlib import Path

from tpc.errors import UsageError
from tpc.manifest import MANIFEST_NAME
from tpc.profiling.profiler import ProfileConfig, profile_model


def _progress_bar(total: int, description: str, quiet: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=True,
    )
    task = progress.add_task(description, total=total)
    return progress, (lambda _stage: progress.advance(task))


def resolve_artifact(
    target: str, ratio: float | None, method: str | None, config: ProfileConfig, cache_dir: Path | None, quiet: bool
) -> Path:
    """An artifact directory as is, or a model compiled (once) through the cache."""
    path = Path(target)
    if (path / MANIFEST_NAME).is_file():
        return path
    from tpc.compiler.cache import cached_compile
    from tpc.compiler.pipeline import CompileSettings
    from tpc.progress import StageProgress

    settings = CompileSettings(model=target, output=Path("."), method=method, ratio=ratio or 0.0, target="ort")
    with StageProgress(9, quiet=quiet, title=f"compile {target} r={ratio or 0} ").running() as progress:
        artifact, _ = cached_compile(settings, cache_dir, progress)
    return artifact


def profile_artifact(
    target: str,
    config: ProfileConfig,
    ratio: float | None = None,
    method: str | None = None,
    cache_dir: Path | None = None,
    quiet: bool = False,
    keep: int | None = None,
) -> dict:
    from tpc.profiling.profiler import reset_peak_memory
    from tpc.runtimes.compiled_model import CompiledModel

    is_artifact = (Path(target) / MANIFEST_NAME).is_file()
    artifact = resolve_artifact(target, None if is_artifact else ratio, method, config, cache_dir, quiet)
    reset_peak_memory()  # the peak reported is loading + running, not a compile that preceded it
    model = CompiledModel.load(artifact, provider=config.provider, threads=config.threads, runtime=config.runtime)
    if is_artifact:
        model.set_budget(keep, ratio)
    elif keep is not None:
        raise UsageError("--keep applies to a bucketed artifact; to compile a model at a budget use --ratio")
    bar, step = _progress_bar(config.warmup + config.runs, f"profile {artifact.name}", quiet)
    with bar:
        return profile_model(model, config, step, artifact_path=str(artifact))


def profile_sweep(
    model: str,
    ratios: list[float],
    method: str,
    config: ProfileConfig,
    cache_dir: Path | None = None,
    quiet: bool = False,
) -> dict:
    if not ratios:
        raise UsageError("--sweep-ratios needs at least one ratio")
    if (Path(model) / MANIFEST_NAME).is_file():
        raise UsageError("--sweep-ratios takes a model (preset, directory or hub id), not a compiled artifact")
    points = [profile_artifact(model, config, ratio=r, method=method, cache_dir=cache_dir, quiet=quiet) for r in ratios]
    return {"schema": "tpc.profile.sweep", "schema_version": 1, "points": points}
