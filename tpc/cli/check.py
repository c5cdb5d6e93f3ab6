"""`tpc check`: static TensorRT compatibility report of an artifact's graphs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

CHECKABLE_TARGETS = ("trt", "onnx")


@click.command("check")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--target",
    type=click.Choice(["trt"]),
    default="trt",
    show_default=True,
    help="The only target checked today: TensorRT. Accepts artifacts compiled with --target trt or onnx.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check_cmd(artifact, target, as_json):
    """Report TensorRT blockers (exit 1), warnings and int64 usage for ARTIFACT.

    ARTIFACT must be compiled with --target trt (or onnx: portable graphs without a plan);
    its files are verified against the manifest first, as `tpc run` does.
    """
    from tpc.errors import UsageError
    from tpc.manifest import load_artifact

    loaded = load_artifact(artifact)  # every file present and unmodified (sha256)
    if loaded.target not in CHECKABLE_TARGETS:
        raise UsageError(
            f"{artifact} was compiled with --target {loaded.target}: its graphs are optimised for ONNX Runtime "
            f"(contrib operators), not for TensorRT; `tpc check --target trt` accepts artifacts compiled with "
            f"--target {' or '.join(CHECKABLE_TARGETS)}: recompile with --target trt"
        )
    from tpc.compiler.trt_check import check_artifact

    reports = check_artifact(loaded.root, loaded.manifest)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in reports], indent=2))
    else:
        for r in reports:
            status = "ok" if r.ok else f"{len(r.blockers)} blocker(s)"
            click.echo(
                f"{r.graph}: {status}; opset {r.opset}; {sum(r.ops.values())} nodes; "
                f"int64 tensors: {', '.join(r.int64[:6]) or 'none'}{' ...' if len(r.int64) > 6 else ''}"
            )
            for blocker in r.blockers:
                click.echo(f"  BLOCKER {blocker}")
            for warning in r.warnings:
                click.echo(f"  warning {warning}")
    sys.exit(0 if all(r.ok for r in reports) else 1)
