"""``mgm2fp convert`` and ``mgm2fp inspect``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.table import Table

from mgm2fp.cli.analyze import DATA_HELP, SEQ_LEN_HELP, TIMESTEPS_HELP, TOKENIZER_HELP, load_full_model, print_report, run_analysis, validate_init
from mgm2fp.cli.common import app, console, tensor_loading_progress
from mgm2fp.layer_plan import LayerPlan, format_range

if TYPE_CHECKING:
    from mgm2fp.fixed_point.model import FixedPointMGM


@app.command()
def convert(
    source: str = typer.Argument(..., help="Hub id (ORG/NAME), local folder or weights file of the source model."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write the converted model to."),
    share_layers: Optional[str] = typer.Option(None, help="Inclusive 0-indexed range A-B that becomes the shared block; blocks before it are pre blocks, after it post blocks."),
    pre_layers: Optional[str] = typer.Option(None, help="Explicit plan: blocks kept before the fixed point, e.g. 0 (empty string for none)."),
    fixed_point_layers: Optional[str] = typer.Option(None, help="Explicit plan: the range the shared block is taken from, e.g. 5."),
    post_layers: Optional[str] = typer.Option(None, help="Explicit plan: blocks kept after the fixed point, e.g. 11 (empty string for none)."),
    preset: Optional[str] = typer.Option(None, help="Named layer plan instead of ranges: fp-maskgit (first 4 and last 4 blocks kept, the blocks between them shared, as in arXiv 2605.31215)."),
    init: Optional[str] = typer.Option(None, help="Shared block weights: first, middle, last or mean of the fixed-point range, or a block index; with --layer-plan auto also central (default: first, or the plan file's)."),
    injection: str = typer.Option("fpdm", help="Input injection: fpdm (as in arXiv 2605.31215), add (zero-initialised, exact at conversion) or none."),
    num_iterations: Optional[int] = typer.Option(None, min=1, help="Default fixed-point iterations per denoising step [default: blocks replaced by the shared block]."),
    revision: Optional[str] = typer.Option(None, help="Branch, tag or commit of a hub source."),
    filename: Optional[str] = typer.Option(None, help="Weights file inside a hub repository or folder."),
    dtype: Optional[str] = typer.Option(None, help="Store weights as float32, bfloat16 or float16 [default: as in the source]."),
    num_heads: Optional[int] = typer.Option(None, min=1, help="Attention heads, for checkpoints whose config does not name them."),
    overwrite: bool = typer.Option(False, help="Replace the output folder if it exists."),
    layer_plan: Optional[str] = typer.Option(None, help="auto (plan from a CKA analysis of --data) or a plan.json written by `mgm2fp analyze` (or its folder); replaces the layer ranges."),
    data: Optional[Path] = typer.Option(None, help="With --layer-plan auto: " + DATA_HELP),
    tokenizer: Optional[str] = typer.Option(None, help="With --layer-plan auto: " + TOKENIZER_HELP),
    timesteps: str = typer.Option("0.1,0.3,0.5,0.7,0.9", help="With --layer-plan auto: " + TIMESTEPS_HELP),
    num_sequences: int = typer.Option(64, min=1, help="With --layer-plan auto: number of sequences to analyse."),
    seq_len: Optional[int] = typer.Option(None, min=1, help="With --layer-plan auto: " + SEQ_LEN_HELP),
    batch_size: int = typer.Option(8, min=1, help="With --layer-plan auto: sequences per forward pass."),
    num_pre: int = typer.Option(1, min=0, help="With --layer-plan auto: blocks kept before the fixed point."),
    num_post: int = typer.Option(1, min=0, help="With --layer-plan auto: blocks kept after the fixed point."),
    device: str = typer.Option("cpu", help="With --layer-plan auto: device for the analysis, e.g. cuda."),
    analysis_output: Optional[Path] = typer.Option(None, help="With --layer-plan auto: also write the analysis (cka.json, plan.json, figures) to this folder."),
) -> None:
    """Convert a masked generative model into a fixed-point MGM and save it."""
    import mgm2fp
    from mgm2fp.saving import atomic_directory

    # Fail before reading any weights when the output exists or is the source itself.
    if Path(source).exists() and Path(source).resolve() in (output.resolve(), *output.resolve().parents):
        from mgm2fp.errors import OutputExistsError

        raise OutputExistsError(f"output '{output}' contains the source '{source}'; write the converted model to another folder")
    if output.exists() and not overwrite:
        with atomic_directory(output, overwrite=False):
            pass
    _check_plan_options(layer_plan, data, share_layers, pre_layers, fixed_point_layers, post_layers, preset)
    options = {"dtype": dtype} if dtype else {}
    if num_heads is not None:
        options["num_heads"] = num_heads
    if layer_plan == "auto":
        model = _convert_with_auto_plan(
            source,
            init=init or "first",
            injection=injection,
            num_iterations=num_iterations,
            revision=revision,
            filename=filename,
            dtype=dtype,
            num_heads=num_heads,
            analysis={"data": data, "tokenizer": tokenizer, "timesteps": timesteps, "num_sequences": num_sequences, "seq_len": seq_len, "batch_size": batch_size},
            num_pre=num_pre,
            num_post=num_post,
            device=device,
            analysis_output=analysis_output,
            overwrite=overwrite,
        )
    else:
        plan = _read_plan_file(layer_plan, init) if layer_plan is not None else None
        with tensor_loading_progress("reading source weights"):
            model = mgm2fp.convert(
                source,
                share_layers=share_layers,
                pre_layers=pre_layers,
                fixed_point_layers=fixed_point_layers,
                post_layers=post_layers,
                plan=plan,
                preset=preset,
                init=init or "first",
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


def _check_plan_options(layer_plan: str | None, data: Path | None, *ranges: str | None) -> None:
    from mgm2fp.errors import ConfigError

    if layer_plan is not None and any(value is not None for value in ranges):
        raise ConfigError("--layer-plan replaces --preset, --share-layers and --pre/--fixed-point/--post-layers; give one or the other")
    if layer_plan == "auto" and data is None:
        raise ConfigError("--layer-plan auto needs --data: token ids (.npy) or text to run the CKA analysis on")
    if data is not None and layer_plan != "auto":
        raise ConfigError("--data is used only with --layer-plan auto; add --layer-plan auto or drop --data")


def _read_plan_file(path: str, init: str | None) -> LayerPlan:
    """Read a plan.json; an explicit --init replaces the plan's init."""
    from mgm2fp.analysis import read_plan
    from mgm2fp.layer_plan import parse_init

    plan = read_plan(path)
    if init is not None:
        plan = dataclasses.replace(plan, init=parse_init(init))
    return plan


def _convert_with_auto_plan(
    source: str,
    *,
    init: str,
    injection: str,
    num_iterations: int | None,
    revision: str | None,
    filename: str | None,
    dtype: str | None,
    num_heads: int | None,
    analysis: dict[str, Any],
    num_pre: int,
    num_post: int,
    device: str,
    analysis_output: Path | None,
    overwrite: bool,
) -> FixedPointMGM:
    """Load every block, run the CKA analysis, print the proposed plan and convert the loaded model by it."""
    from mgm2fp.analysis import parse_timesteps, propose_plan, save_analysis
    from mgm2fp.analysis.planner import check_plan_options
    from mgm2fp.errors import ConfigError
    from mgm2fp.fixed_point.injection import INJECTIONS
    from mgm2fp.saving import atomic_directory
    from mgm2fp.surgery import convert_model

    # Check what can be checked before the analysis, which is the slow part.
    if injection not in INJECTIONS:
        raise ConfigError(f"unknown injection '{injection}'; use one of {', '.join(INJECTIONS)}")
    validate_init(init)
    parse_timesteps(analysis["timesteps"])
    if analysis_output is not None and analysis_output.exists() and not overwrite:
        with atomic_directory(analysis_output, overwrite=False):
            pass

    model = load_full_model(source, revision=revision, filename=filename, dtype=dtype, num_heads=num_heads, device=device)
    check_plan_options(model.num_blocks, num_pre=num_pre, num_post=num_post)
    similarity = run_analysis(model, **analysis)
    proposal = propose_plan(similarity.matrix, num_pre=num_pre, num_post=num_post, init=init)
    print_report(similarity, proposal)
    if analysis_output is not None:
        written = save_analysis(similarity, proposal, analysis_output, overwrite=overwrite, extra={"source": source, "revision": revision, "data": str(analysis["data"])})
        console.print(f"[green]saved[/] analysis to {written.folder}")
    # The loaded source is not used again, so its blocks move into the converted model uncopied.
    return convert_model(model.to("cpu"), proposal.plan, injection=injection, num_iterations=num_iterations, copy_weights=False)


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
