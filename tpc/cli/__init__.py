"""The ``tpc`` command line: one small function per command.

A ``TpcError`` prints one line and exits with its code; any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations

import errno
import logging
import sys

import click

from tpc.errors import TpcError


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


def _register() -> None:
    from tpc.cli.build import build_cmd
    from tpc.cli.check import check_cmd
    from tpc.cli.compile import compile_cmd
    from tpc.cli.export_triton import export_triton_cmd
    from tpc.cli.gate import gate_cmd
    from tpc.cli.loadtest import loadtest_cmd
    from tpc.cli.methods import methods_cmd
    from tpc.cli.models import models_cmd
    from tpc.cli.presets import presets_cmd
    from tpc.cli.profile import profile_cmd
    from tpc.cli.run import run_cmd
    from tpc.cli.serve import serve_cmd

    for command in (
        compile_cmd,
        run_cmd,
        profile_cmd,
        gate_cmd,
        build_cmd,
        check_cmd,
        methods_cmd,
        models_cmd,
        presets_cmd,
        serve_cmd,
        loadtest_cmd,
        export_triton_cmd,
    ):
        cli.add_command(command)


_register()


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
    except OSError as exc:  # the machine, not tpc: a full disk or a read-only one is one line, not a traceback
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        click.echo(f"error: {exc.strerror or exc}{where}", err=True)
        sys.exit(1)


_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


if __name__ == "__main__":
    main()
