"""`tpc build`: TensorRT engines from an artifact's plan, on the target GPU."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("build")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--use-trtexec", is_flag=True, help="Build with trtexec instead of the TensorRT Python API.")
@click.option("-q", "--quiet", is_flag=True)
def build_cmd(artifact, use_trtexec, quiet):
    """Build the TensorRT engines of ARTIFACT and record this GPU in its manifest."""
    from tpc.compiler.trt_build import build_engines
    from tpc.manifest import load_artifact, write_manifest
    from tpc.progress import StageProgress

    loaded = load_artifact(artifact)
    with StageProgress(3, quiet=quiet, title="build ").running() as progress:
        engines = build_engines(loaded.root, loaded.manifest, use_trtexec=use_trtexec, progress=progress)
    write_manifest(loaded.root, dict(loaded.manifest, engines=engines))
    if not quiet:
        click.echo(
            f"built TensorRT {engines['tensorrt_version']} engines for {engines['gpu_name']} "
            f"(sm {engines['compute_capability']}, {engines['precision']}) in {loaded.root / 'engines'}"
        )
