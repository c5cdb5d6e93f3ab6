"""Methods that installed packages register in the ``tpc.methods`` entry-point group (listed, not imported)."""

from __future__ import annotations

from importlib import metadata

ENTRY_POINT_GROUP = "tpc.methods"


def entry_point_methods() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
