"""`tpc profile`: stage latencies of an artifact, or of a sweep over ratios."""

from __future__ import annotations

from pathlib import Path

import click

from tpc.cli.paths import OutputPath
from tpc.errors import UsageError


def _ratios(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--sweep-ratios must be comma-separated numbers, got {text!r}") from None


@click.command("profile")
@click.argument("target")
@click.option("--runs", type=int, default=20, show_default=True, help="Measured runs.")
@click.option("--warmup", type=int, default=3, show_default=True, help="Unmeasured warm-up runs.")
@click.option("--image", default=None, help="Image file (default: a synthetic image; 'none': text only).")
@click.option(
    "--image-size",
    default=None,
    help="HxW of the synthetic image in pixels (default: one crop, square; grid families: the --grid's size), "
    "e.g. 672x1344.",
)
@click.option(
    "--grid",
    default=None,
    help="Grid families (Qwen2.5-VL): the compiled grid HxW in patches (or vision_HxW) whose graph the synthetic "
    "picture runs (default: the largest compiled grid, at its exact pixel size).",
)
@click.option("--prompt", default=None, help="Prompt text (default: synthetic, --prompt-tokens long).")
@click.option("--prompt-tokens", type=int, default=64, show_default=True)
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--new-tokens", type=int, default=32, show_default=True, help="Generated tokens per run.")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="Intra-op threads (default: all cores).")
@click.option("--runtime", type=click.Choice(["auto", "ort", "trt"]), default="auto", show_default=True)
@click.option("--sweep-ratios", default=None, help="Compile TARGET (a model) at each ratio and profile each.")
@click.option(
    "--ratio",
    type=float,
    default=None,
    help="TARGET a model: compile at this ratio; a bucketed artifact: run at this ratio.",
)
@click.option("--keep", type=int, default=None, help="Bucketed artifacts: visual tokens (rounded up to a bucket).")
@click.option("--method", default=None, help="Method when TARGET is a model (default: the family's, see `tpc models`).")
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Artifact cache for models and sweeps (default ~/.cache/tpc/artifacts or $TPC_CACHE_DIR).",
)
@click.option("--json", "json_path", type=OutputPath(), default=None, help="Write the profile JSON.")
@click.option("--plot", "plot_path", type=OutputPath(), default=None, help="Write a PNG plot.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or table.")
def profile_cmd(
    target,
    runs,
    warmup,
    image,
    image_size,
    grid,
    prompt,
    prompt_tokens,
    batch,
    new_tokens,
    provider,
    threads,
    runtime,
    sweep_ratios,
    ratio,
    keep,
    method,
    cache_dir,
    json_path,
    plot_path,
    quiet,
):
    """Profile TARGET: an artifact directory, or a model (compiled through the cache)."""
    from tpc.cli.profile_table import print_profile, print_sweep
    from tpc.profiling.profiler import ProfileConfig, write_json
    from tpc.profiling.session import profile_artifact, profile_sweep

    config = ProfileConfig(
        runs=runs,
        warmup=warmup,
        batch=batch,
        new_tokens=new_tokens,
        prompt=prompt,
        prompt_tokens=prompt_tokens,
        image=image,
        image_size=image_size,
        grid=grid,
        provider=provider,
        threads=threads,
        runtime=runtime,
    )
    config.validate()
    if sweep_ratios is not None:
        document = profile_sweep(target, _ratios(sweep_ratios), method, config, cache_dir, quiet)
        if not quiet:
            print_sweep(document)
    else:
        document = profile_artifact(
            target, config, ratio=ratio, method=method, cache_dir=cache_dir, quiet=quiet, keep=keep
        )
        if not quiet:
            print_profile(document)
    if json_path is not None:
        write_json(document, json_path)
    if plot_path is not None:
        from tpc.profiling.plot import plot_profile, plot_sweep

        (plot_sweep if sweep_ratios is not None else plot_profile)(document, plot_path)
