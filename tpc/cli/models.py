"""`tpc models`: the model families tpc compiles, their presets, and which methods apply."""

from __future__ import annotations

import click


@click.command("models")
def models_cmd():
    """List the supported model families, their presets and the methods that apply to each."""
    from tpc.methods import METHODS
    from tpc.methods.in_llm import LLM_METHODS
    from tpc.models.families import FAMILIES
    from tpc.models.presets import PRESETS

    for family in FAMILIES.values():
        presets = [name for name, preset in PRESETS.items() if preset.family == family.model_type]
        methods = [name for name in METHODS.names() if family.has_cls or not METHODS.get(name).needs_cls]
        refused = [name for name in METHODS.names() if name not in methods]
        grid_only = [name for name in methods if family.methods is not None and name not in family.methods]
        methods = [name for name in methods if name not in grid_only]
        click.echo(f"{family.model_type:16s} {family.title} ({family.hf_class})")
        encoder = "with [CLS]" if family.has_cls else "without [CLS]"
        crops = "several crops per image (anyres)" if family.multi_crop else "one crop per image"
        if family.grid:
            crops = "native resolution: one vision graph per compiled grid (--image-sizes), pruned after the merger"
        click.echo(f"{'':16s} vision encoder {encoder}, {crops}; {family.decoder} decoder")
        click.echo(f"{'':16s} presets: {', '.join(presets) or '-'}")
        in_llm = ", ".join(LLM_METHODS.names())
        if family.multi_crop:
            in_llm += " (unpruned: one selector per stage for any block length; pruned per crop: one per crop grid)"
        click.echo(f"{'':16s} pre-LLM methods: {', '.join(methods)}; in-LLM: {in_llm}")
        if refused:
            click.echo(f"{'':16s} not applicable (need a [CLS] token): {', '.join(refused)}")
        if grid_only:
            click.echo(f"{'':16s} not available yet (square patch grids only): {', '.join(grid_only)}")
    click.echo("a checkpoint's family comes from its config.json model_type")
