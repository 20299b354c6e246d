"""``mgm2fp convert`` and ``mgm2fp inspect``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from mgm2fp.cli.common import app, console, tensor_loading_progress
from mgm2fp.layer_plan import format_range


@app.command()
def convert(
    source: str = typer.Argument(..., help="Hub id (ORG/NAME), local folder or weights file of the source model."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write the converted model to."),
    share_layers: Optional[str] = typer.Option(None, help="Inclusive 0-indexed range A-B that becomes the shared block; blocks before it are pre blocks, after it post blocks."),
    pre_layers: Optional[str] = typer.Option(None, help="Explicit plan: blocks kept before the fixed point, e.g. 0 (empty string for none)."),
    fixed_point_layers: Optional[str] = typer.Option(None, help="Explicit plan: the range the shared block is taken from, e.g. 5."),
    post_layers: Optional[str] = typer.Option(None, help="Explicit plan: blocks kept after the fixed point, e.g. 11 (empty string for none)."),
    preset: Optional[str] = typer.Option(None, help="Named layer plan instead of ranges: fp-maskgit (first 4 and last 4 blocks kept, the blocks between them shared, as in arXiv 2605.31215)."),
    init: str = typer.Option("first", help="Shared block weights: first, middle, last or mean of the fixed-point range, or a block index."),
    injection: str = typer.Option("fpdm", help="Input injection: fpdm (as in arXiv 2605.31215), add (zero-initialised, exact at conversion) or none."),
    num_iterations: Optional[int] = typer.Option(None, min=1, help="Default fixed-point iterations per denoising step [default: blocks replaced by the shared block]."),
    revision: Optional[str] = typer.Option(None, help="Branch, tag or commit of a hub source."),
    filename: Optional[str] = typer.Option(None, help="Weights file inside a hub repository or folder."),
    dtype: Optional[str] = typer.Option(None, help="Store weights as float32, bfloat16 or float16 [default: as in the source]."),
    num_heads: Optional[int] = typer.Option(None, min=1, help="Attention heads, for checkpoints whose config does not name them."),
    overwrite: bool = typer.Option(False, help="Replace the output folder if it exists."),
) -> None:
    """Convert a masked generative model into a fixed-point MGM and save it."""
    import mgm2fp
    from mgm2fp.saving import atomic_directory

    # Fail before reading any weights when the output exists.
    if output.exists() and not overwrite:
        with atomic_directory(output, overwrite=False):
            pass
    options = {"dtype": dtype} if dtype else {}
    if num_heads is not None:
        options["num_heads"] = num_heads
    with tensor_loading_progress("reading source weights"):
        model = mgm2fp.convert(
            source,
            share_layers=share_layers,
            pre_layers=pre_layers,
            fixed_point_layers=fixed_point_layers,
            post_layers=post_layers,
            preset=preset,
            init=init,
            injection=injection,
            num_iterations=num_iterations,
            revision=revision,
            filename=filename,
            **options,
        )
    mgm2fp.save_pretrained(model, output, overwrite=overwrite)
    source_parameters = model.metadata["source"]["num_parameters"]
    console.print(
        f"[green]saved[/] {output}: {model.plan.describe()}, injection {model.injection_name}, "
        f"{source_parameters:,} -> {model.num_parameters():,} parameters, "
        f"{model.cost_per_step()} block forward passes per step at {model.num_iterations} iterations"
    )


@app.command()
def inspect(
    source: str = typer.Argument(..., help="Hub id, folder or weights file of a source model or a converted model."),
    revision: Optional[str] = typer.Option(None, help="Branch, tag or commit of a hub source."),
    filename: Optional[str] = typer.Option(None, help="Weights file inside a hub repository or folder."),
    num_heads: Optional[int] = typer.Option(None, min=1, help="Attention heads, for checkpoints whose config does not name them."),
) -> None:
    """Print a model's family, sizes, layer plan, parameter counts and the cost of one denoising step."""
    from mgm2fp.fixed_point.model import FixedPointMGM
    from mgm2fp.loading import load
    from mgm2fp.families.registry import detect_family
    from mgm2fp.hub import resolve_source

    resolved = resolve_source(source, revision=revision, filename=filename)
    family = detect_family(resolved)
    options = {}
    if "keep_blocks" in family.overrides:
        options["keep_blocks"] = set()  # shapes are enough: read no block weights
    if num_heads is not None:
        options["num_heads"] = num_heads
    with tensor_loading_progress("reading weights"):
        model = load(source, revision=revision, filename=filename, **options)

    table = Table(title=f"{source}", show_header=False)
    table.add_column("property", style="bold")
    table.add_column("value")
    is_fixed_point = isinstance(model, FixedPointMGM)
    table.add_row("family", f"{model.source_family} (fixed-point)" if is_fixed_point else model.family)
    table.add_row("hidden size", str(model.hidden_size))
    table.add_row("vocabulary (logits)", str(model.vocab_size))
    table.add_row("mask token id", str(model.mask_token_id))
    table.add_row("parameters", f"{model.num_parameters():,}")
    if is_fixed_point:
        source_info = model.metadata.get("source", {})
        plan = model.plan
        table.add_row("source", f"{source_info.get('id')} ({source_info.get('num_blocks')} blocks, {source_info.get('num_parameters') or 0:,} parameters)")
        table.add_row("layer plan", f"pre {format_range(plan.pre)} | fixed point {format_range(plan.fixed_point)} (init {plan.init}) | post {format_range(plan.post)}")
        table.add_row("stored blocks", f"{len(model.pre_blocks)} pre + {len(model.fixed_point_block)} shared + {len(model.post_blocks)} post")
        table.add_row("injection", model.injection_name)
        table.add_row("cost of one step", f"{len(model.pre_blocks)} + N x {len(model.fixed_point_block)} + {len(model.post_blocks)} block forward passes ({model.cost_per_step()} at the default N = {model.num_iterations})")
    else:
        table.add_row("blocks", str(model.num_blocks))
        table.add_row("cost of one step", f"{model.cost_per_step()} block forward passes")
    console.print(table)
