"""The ``tpc`` command line: one small function per command.

A ``TpcError`` prints one line and exits with its code; any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from tpc.errors import TpcError

COMPILE_STAGES = 9  # load, trace, passes, 3 exports, prepare, verify, manifest


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="tpc")
def cli(verbose: int) -> None:
    """tpc: compile vision-language models with token pruning inside the graph."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # their retries and fallbacks end in one tpc error line
        for noisy in ("huggingface_hub", "transformers"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


@cli.command("compile")
@click.argument("model")
@click.option("--method", default="fastervlm", show_default=True, help="Token-selection method.")
@click.option("--ratio", type=float, default=None, help="Fraction of visual tokens removed, in [0, 1).")
@click.option("--keep", type=int, default=None, help="Visual tokens kept (overrides --ratio).")
@click.option("--target", type=click.Choice(["onnx", "ort"]), default="ort", show_default=True,
              help="onnx: portable graphs; ort: graphs optimised offline for ONNX Runtime.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Artifact directory (default: build/<model>-<method>-<budget>).")
@click.option("--no-verify", is_flag=True, help="Skip the parity check against PyTorch.")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--dump-graphs", type=click.Path(path_type=Path), default=None,
              help="Write the graph before/after each pass here (also $TPC_DUMP_GRAPHS).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def compile_cmd(model, method, ratio, keep, target, output, no_verify, force, dump_graphs, quiet):
    """Compile MODEL (a preset, a checkpoint directory or a hub id) into an artifact."""
    from tpc.compiler.pipeline import CompileSettings, compile_model
    from tpc.progress import StageProgress

    if output is None:
        budget = f"k{keep}" if keep is not None else f"r{ratio if ratio is not None else 0}"
        output = Path("build") / f"{Path(model).name}-{method}-{budget}"
    settings = CompileSettings(model=model, output=output, method=method, ratio=ratio, keep=keep, target=target,
                               verify=not no_verify, force=force, dump_graphs=dump_graphs)
    with StageProgress(COMPILE_STAGES, quiet=quiet, title="compile ").running() as progress:
        path = compile_model(settings, progress)
    manifest = json.loads((path / "manifest.json").read_text())
    tokens = manifest["visual_tokens"]
    check = "skipped" if manifest["verification"].get("skipped") else "passed"
    if not quiet:
        click.echo(f"compiled {model} -> {path} ({manifest['method']['name']}, {tokens['before']} -> "
                   f"{tokens['after']} visual tokens, target {target}, verification {check}, "
                   f"{manifest['compile_seconds']:.1f} s)")


@cli.command("run")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--image", type=click.Path(path_type=Path), default=None, help="Image file (omit for text only).")
@click.option("--prompt", required=True, help="The user's question or instruction.")
@click.option("--max-new-tokens", type=int, default=32, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def run_cmd(artifact, image, prompt, max_new_tokens, temperature, top_p, seed, provider, threads, as_json):
    """Generate a reply with a compiled ARTIFACT."""
    from tpc.runtimes.compiled_model import CompiledModel
    from tpc.runtimes.prompting import load_image
    from tpc.runtimes.sampling import Sampler

    sampler = Sampler(temperature=temperature, top_p=top_p, seed=seed)
    images = [load_image(image)] if image is not None else None
    model = CompiledModel.load(artifact, provider=provider, threads=threads)
    info = model.graphs.describe()
    if info["fell_back"]:
        click.echo(f"warning: requested {info['requested_provider']} but ONNX Runtime runs on {info['provider']}",
                   err=True)
    result = model.generate([prompt], images, max_new_tokens=max_new_tokens, sampler=sampler)
    text = model.decode(result.token_ids[0])
    if as_json:
        payload = {
            "text": text,
            "token_ids": result.token_ids[0],
            "timings_ms": {k: round(v, 3) for k, v in result.timings_ms.items()},
            "decode_tokens_per_s": round(result.decode_tokens_per_s, 3),
            "visual_tokens": model.artifact.manifest["visual_tokens"],
            "kept_indices": result.kept_indices[0].tolist() if result.kept_indices is not None else None,
            "provider": info["provider"],
            "requested_provider": info["requested_provider"],
        }
        click.echo(json.dumps(payload))
        return
    click.echo(text)
    t = result.timings_ms
    click.echo(f"[{info['provider']}] ttft {t['ttft_ms']:.1f} ms (vision {t.get('vision_ms', 0):.1f}, "
               f"prefill {t['prefill_ms']:.1f}), decode {result.decode_tokens_per_s:.1f} tok/s, "
               f"{len(result.token_ids[0])} tokens", err=True)


@cli.command("presets")
def presets_cmd():
    """List the built-in model presets."""
    from tpc.models.presets import PRESETS

    for name, preset in PRESETS.items():
        source = preset.hub_id or "built in, offline"
        click.echo(f"{name:12s} {source:28s} {preset.description}")


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="tpc", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except TpcError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
