"""Click parameter types for paths tpc writes: checked while the arguments are parsed."""

from __future__ import annotations

from pathlib import Path

import click

from tpc.outputs import check_writable


class OutputPath(click.ParamType):
    """A file (``kind="file"``) or directory tpc will write; unwritable -> ``error: cannot write ...``, exit 2."""

    name = "path"

    def __init__(self, kind: str = "file"):
        self.kind = kind

    def convert(self, value, param, ctx) -> Path:
        if isinstance(value, Path):
            return check_writable(value, self.kind)
        return check_writable(Path(value), self.kind)
