"""`tpc presets`."""

from __future__ import annotations

import click


@click.command("presets")
def presets_cmd():
    """List the built-in model presets."""
    from tpc.models.presets import PRESETS

    for name, preset in PRESETS.items():
        source = preset.hub_id or "built in, offline"
        click.echo(f"{name:12s} {source:28s} {preset.description}")
