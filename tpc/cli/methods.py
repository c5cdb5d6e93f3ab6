"""`tpc methods`: every selection method, its parameters and where it prunes."""

from __future__ import annotations

import click


@click.command("methods")
def methods_cmd():
    """List the token-selection methods."""
    from tpc.methods import METHODS
    from tpc.methods.entry_points import entry_point_methods

    for name in METHODS.names():
        method = METHODS.get(name)
        params = ", ".join(f"{p.name}={p.default} in {p.range_text()}" for p in method.params) or "-"
        click.echo(f"{name:10s} {method.description}")
        click.echo(f"{'':10s} parameters: {params}; prunes at: {method.prunes_at}")
    from tpc.methods.in_llm import LLM_METHODS

    for name in LLM_METHODS.names():
        method = LLM_METHODS.get(name)
        params = ", ".join(f"{p[0]}={p[1]}" for p in method.params)
        click.echo(f"{name:10s} {method.description}")
        click.echo(
            f"{'':10s} parameters: {params}; prunes at: {method.prunes_at} "
            f"(--method {name}, or --llm-method {name} after a pre-LLM method)"
        )
    for name in entry_point_methods():
        click.echo(f"{name:10s} (plugin from the tpc.methods entry point group)")
    click.echo("user scores: --method package.module:function (see examples/plugin)")
