"""The ``mgm2fp`` command line (typer + rich). Commands only parse, validate and call the Python API."""

from __future__ import annotations

import sys

import typer

from mgm2fp.cli.common import CliState, app, err_console, setup_logging
from mgm2fp.cli import convert as _convert  # noqa: F401  (registers commands)
from mgm2fp.cli import push as _push  # noqa: F401
from mgm2fp.cli import analyze as _analyze  # noqa: F401  (registers commands)
from mgm2fp.cli import finetune as _finetune  # noqa: F401
from mgm2fp.cli import evaluate as _evaluate  # noqa: F401
from mgm2fp.cli import decode as _decode  # noqa: F401  (registers commands)
from mgm2fp.cli import sample as _sample  # noqa: F401
from mgm2fp.cli import quickstart as _quickstart  # noqa: F401


@app.callback()
def _options(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logs and full tracebacks.")) -> None:
    setup_logging(verbose)


def main() -> None:
    """Run the CLI: an mgm2fp error prints one line and exits with status 1 (a traceback with --verbose)."""
    from mgm2fp.errors import Mgm2fpError

    try:
        app()
    except Mgm2fpError as error:
        if CliState.verbose:
            raise
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)


__all__ = ["app", "main"]
