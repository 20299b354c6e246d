"""Shared pieces of the command line: the typer app, consoles, progress bars and option parsing."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

app = typer.Typer(
    name="mgm2fp",
    help="Convert masked generative models into fixed-point MGMs (arXiv 2605.31215), then fine-tune, sample, evaluate and publish them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Help texts are plain text: "[default: ...]" must not be read as rich markup.
    rich_markup_mode=None,
)
console = Console()
err_console = Console(stderr=True)


class CliState:
    verbose = False


def setup_logging(verbose: bool) -> None:
    CliState.verbose = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=verbose, show_time=False)],
        force=True,
    )
    logging.getLogger("mgm2fp").setLevel(logging.DEBUG if verbose else logging.WARNING)


def make_progress(transient: bool = True) -> Progress:
    """Return a rich progress bar on stderr with count, elapsed and remaining time (hidden when stderr is not a terminal)."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
        disable=not err_console.is_terminal,
    )


@contextmanager
def tensor_loading_progress(description: str = "reading weights") -> Iterator[None]:
    """Show a progress bar while the loaders read tensors."""
    from mgm2fp.weights import report_progress

    with make_progress() as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int, name: str) -> None:
            progress.update(task, completed=done, total=total)

        with report_progress(update):
            yield


def check_device(device: str) -> str:
    """Return ``device`` after checking that torch parses it and that it is available here.

    Raises:
        ConfigError: for an unknown device or an accelerator this machine lacks.
    """
    import torch

    from mgm2fp.errors import ConfigError

    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise ConfigError(f"unknown device '{device}'; use cpu, cuda, cuda:N or mps") from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' requested but this torch build has no usable CUDA device; use --device cpu")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device '{device}' requested but MPS is not available here; use --device cpu")
    return device
