"""`tpc run`.

Arguments are checked before anything heavy is imported or loaded, so a bad flag costs the
start of the interpreter, not the load of the model. On an ONNX Runtime artifact the run
imports neither torch nor transformers (see ``tpc.runtimes.compiled_model``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import click

from tpc.errors import UsageError


@click.command("run")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--image",
    "images",
    type=click.Path(path_type=Path),
    multiple=True,
    help="Image file; repeat for several pictures in one prompt, in order (omit for text only).",
)
@click.option("--prompt", required=True, help="The user's question or instruction.")
@click.option("--max-new-tokens", type=int, default=32, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores).")
@click.option(
    "--runtime",
    type=click.Choice(["auto", "ort", "trt"]),
    default="auto",
    show_default=True,
    help="auto: TensorRT engines for trt artifacts, ONNX Runtime otherwise.",
)
@click.option("--keep", type=int, default=None, help="Bucketed artifacts: visual tokens (rounded up to a bucket).")
@click.option("--ratio", type=float, default=None, help="Bucketed artifacts: fraction of visual tokens removed.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def run_cmd(
    artifact, images, prompt, max_new_tokens, temperature, top_p, seed, provider, threads, runtime, keep, ratio, as_json
):
    """Generate a reply with a compiled ARTIFACT."""
    for image in images or [None]:
        check_run_args(prompt, image, max_new_tokens, temperature, top_p, threads, keep, ratio)
    from tpc.runtimes.compiled_model import CompiledModel
    from tpc.runtimes.prompting import load_image
    from tpc.runtimes.sampling import Sampler

    sampler = Sampler(temperature=temperature, top_p=top_p, seed=seed)
    pictures = [[load_image(image) for image in images]] if images else None
    model = CompiledModel.load(artifact, provider=provider, threads=threads, runtime=runtime)
    model.set_budget(keep, ratio)
    info = model.graphs.describe()
    if info["fell_back"]:
        click.echo(
            f"warning: requested {info['requested_provider']} but ONNX Runtime runs on {info['provider']}", err=True
        )
    result = model.generate([prompt], pictures, max_new_tokens=max_new_tokens, sampler=sampler)
    text = model.decode(result.token_ids[0])
    if as_json:
        pictures = _pictures_payload(result, model.runtime["num_patches"])
        payload = {
            "text": text,
            "token_ids": result.token_ids[0],
            "timings_ms": {k: round(v, 3) for k, v in result.timings_ms.items()},
            "decode_tokens_per_s": round(result.decode_tokens_per_s, 3),
            "visual_tokens": {  # of the prompt's pictures: from the vision tower, rows into the LLM
                "before": sum(p["tokens_before"] for p in pictures) if pictures else model.runtime["num_patches"],
                "after": result.image_tokens[0] if result.image_tokens else 0,
                **({"crops": sum(p["crops"] for p in pictures)} if pictures else {}),
            },
            "kept_indices": (  # every picture's kept indices, one picture after another (see "pictures")
                result.kept_indices[0][: result.image_tokens[0]].tolist() if result.kept_indices is not None else None
            ),
            "pictures": pictures,
            "provider": info["provider"],
            "requested_provider": info["requested_provider"],
            "kv_lengths": result.kv_lengths,
        }
        if result.pictures:  # grid families: the grid the (first) picture ran at, and whether it was resized
            first = result.pictures[0]
            payload["image"] = {
                **{k: v for k, v in pictures[0].items() if k in ("size", "grid", "processor_grid", "resized_to")},
                "tokens": first["tokens"],
                "kept": first["kept"],
            }
        if result.llm_kept_indices is not None:  # image tokens an in-LLM method kept (of those the LLM got)
            payload["llm_kept_indices"] = result.llm_kept_indices[0].tolist()
        if result.input_kept_indices is not None:  # image-span rows the LLM-input selection kept (-1 pads)
            payload["input_kept_indices"] = result.input_kept_indices[0].tolist()
        click.echo(json.dumps(payload))
        return
    click.echo(text)
    t = result.timings_ms
    click.echo(
        f"[{info['provider']}] ttft {t['ttft_ms']:.1f} ms (vision {t.get('vision_ms', 0):.1f}, "
        f"prefill {t['prefill_ms']:.1f}), decode {result.decode_tokens_per_s:.1f} tok/s, "
        f"{len(result.token_ids[0])} tokens",
        err=True,
    )
    for number, picture in enumerate(result.pictures or []):
        if picture["resized_to"]:
            which = "the image's" if len(result.pictures) == 1 else f"image {number + 1}'s"
            click.echo(
                f"note: {which} grid {'x'.join(map(str, picture['processor_grid']))} was not compiled; resized to "
                f"{'x'.join(map(str, picture['resized_to']))} px (grid {'x'.join(map(str, picture['grid']))})",
                err=True,
            )
    if result.llm_kept_indices is not None and result.kv_lengths:
        click.echo(
            f"in-LLM pruning kept {result.llm_kept_indices.shape[1]} image tokens; keys per decoder layer: "
            f"{_runs(result.kv_lengths)}",
            err=True,
        )


def check_run_args(
    prompt: str,
    image: Path | None,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    threads: int | None,
    keep: int | None,
    ratio: float | None,
) -> None:
    """The checks that need no artifact: each failure is one ``UsageError`` line (exit 2)."""
    if not prompt.strip():
        raise UsageError("--prompt is empty; a prompt needs text (a question or an instruction)")
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise UsageError(f"--temperature must be >= 0 (0 = greedy), got {temperature}")
    if not (0 < top_p <= 1):
        raise UsageError(f"--top-p must be in (0, 1], got {top_p}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    if keep is not None and ratio is not None:
        raise UsageError("--keep and --ratio both set the visual-token budget; pass one of them")
    if keep is not None and keep < 1:
        raise UsageError(f"--keep must be at least 1 (visual tokens kept), got {keep}")
    if ratio is not None and not (math.isfinite(ratio) and 0 <= ratio < 1):
        raise UsageError(f"--ratio {ratio} is outside [0, 1): it is the fraction of visual tokens removed")
    if image is not None:
        if not image.exists():
            raise UsageError(f"image {image}: no such file")
        if not image.is_file():
            raise UsageError(f"image {image}: not a file")
        if not os.access(image, os.R_OK):
            raise UsageError(f"image {image}: not readable (permission denied)")


def _pictures_payload(result, num_patches: int) -> list[dict] | None:
    """Per picture of the (one) prompt: crops, tokens from the vision tower, rows into the LLM, kept indices
    (of that picture), and for grid families its size, grid and resize."""
    if not result.picture_tokens or not result.picture_tokens[0]:
        return None
    out, at = [], 0
    for number, rows in enumerate(result.picture_tokens[0]):
        crops = result.crops_per_image[number] if result.crops_per_image else 1
        entry = {"crops": crops, "tokens_before": num_patches * crops, "tokens": rows}
        if result.kept_indices is not None:
            entry["kept_indices"] = result.kept_indices[0][at : at + rows].tolist()
        if result.pictures:
            grid = result.pictures[number]
            entry["tokens_before"] = grid["tokens"]
            entry.update(
                size=list(grid["size"]),
                grid=list(grid["grid"]),
                processor_grid=list(grid["processor_grid"]),
                resized_to=list(grid["resized_to"]) if grid["resized_to"] else None,
            )
        out.append(entry)
        at += rows
    return out


def _runs(values: list[int]) -> str:
    """``[587, 587, 299, 299]`` -> ``587 x2, 299 x2``."""
    parts, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            parts.append(f"{values[start]} x{i - start}")
            start = i
    return ", ".join(parts)
