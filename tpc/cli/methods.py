"""`tpc methods`: every selection method, its parameters, where it prunes and the families it supports.

Prune points: in-ViT (``--select-layer``: fastervlm inside the vision tower), pre-LLM
(the vision/LLM boundary), LLM input (DART, CDPruner: the assembled input embeddings,
before decoder layer 0) and in-LLM (FastV, PyramidDrop, dart-llm: between decoder layers).
"""

from __future__ import annotations

import click


def _families(needs_cls: bool = False, multi_crop_note: bool = False) -> str:
    from tpc.models.families import FAMILIES

    names = [f.title + ("*" if multi_crop_note and f.multi_crop else "") for f in FAMILIES.values()]
    return ", ".join(n for n, f in zip(names, FAMILIES.values(), strict=True) if f.has_cls or not needs_cls)


@click.command("methods")
def methods_cmd():
    """List the token-selection methods."""
    from tpc.methods import METHODS
    from tpc.methods.entry_points import entry_point_methods

    for name in METHODS.names():
        method = METHODS.get(name)
        params = ", ".join(f"{p.name}={p.default} in {p.range_text()}" for p in method.params) or "-"
        point = "pre-LLM, or in-ViT with --select-layer" if name == "fastervlm" else "pre-LLM"
        click.echo(f"{name:10s} {method.description}")
        click.echo(f"{'':10s} parameters: {params}; prunes at: {method.prunes_at}")
        click.echo(f"{'':10s} prune point: {point}; families: {_families(method.needs_cls)}")
    from tpc.methods.in_llm import LLM_METHODS

    for name in LLM_METHODS.names():
        method = LLM_METHODS.get(name)
        params = ", ".join(f"{p[0]}={p[1]}" for p in method.params)
        click.echo(f"{name:10s} {method.description}")
        click.echo(
            f"{'':10s} parameters: {params}; prunes at: {method.prunes_at} "
            f"(--method {name}, or --llm-method {name} after a pre-LLM method)"
        )
        click.echo(f"{'':10s} prune point: in-LLM; families: {_families()}")
    from tpc.methods.llm_input import DESCRIPTIONS, INPUT_METHODS, input_params

    for name in INPUT_METHODS:
        params = ", ".join(
            f"{p.name}={p.default} " + (p.kind.__name__ if p.kind not in (int, float) else f"in {p.range_text()}")
            for p in input_params(name)
        )
        click.echo(f"{name:10s} {DESCRIPTIONS[name]}")
        click.echo(
            f"{'':10s} parameters: {params}; prunes at: the LLM input, on the assembled embeddings "
            f"(--method {name}, or --input-method {name} after a pre-LLM method)"
        )
        click.echo(
            f"{'':10s} prune point: LLM input; families: {_families(multi_crop_note=True)} (*: "
            "after a pre-LLM budget for now)"
        )
    for name in entry_point_methods():
        click.echo(f"{name:10s} (plugin from the tpc.methods entry point group)")
    click.echo("user scores: --method package.module:function (see examples/plugin)")
