"""`tpc export-triton`: an artifact as a Triton Inference Server model repository."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("export-triton")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Model repository directory.")
@click.option("--name", default=None, help="Name of the generation model (default: the compiled model's id).")
@click.option("--instances", type=int, default=1, show_default=True, help="Instances of every model.")
@click.option("--max-batch", type=int, default=8, show_default=True, help="Prompts per generation batch.")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "gpu"]),
    default="auto",
    show_default=True,
    help="Instance kind of the onnxruntime models (auto: a GPU where Triton has one).",
)
@click.option(
    "--runtime",
    type=click.Choice(["auto", "ort", "trt"]),
    default="auto",
    show_default=True,
    help="auto: TensorRT engines when built, the ONNX graphs otherwise.",
)
@click.option("--force", is_flag=True, help="Replace an existing, non-empty output directory.")
def export_triton_cmd(artifact, output, name, instances, max_batch, device, runtime, force):
    """Write ARTIFACT as a Triton model repository (graph models + a Python-backend generation model)."""
    from tpc.serving.triton_repository import export_repository

    summary = export_repository(
        artifact,
        output,
        name=name,
        instances=instances,
        max_batch=max_batch,
        device=device,
        runtime=runtime,
        force=force,
    )
    for model, backend, batch in summary.models:
        batching = f"max batch {batch}, dynamic batching" if batch else "no batch axis"
        click.echo(f"  {model:<32} {backend:<14} {batching}")
    files = f"{summary.linked} files hard-linked from the artifact" + (
        f", {summary.copied} copied (another filesystem)" if summary.copied else ""
    )
    click.echo(
        f"exported {artifact} -> {summary.path}: {len(summary.models)} models, {files}; "
        f"every config.pbtxt validated against Triton's model_config schema; serve the generation model "
        f"{summary.name!r} with `tritonserver --model-repository={summary.path}`"
    )
