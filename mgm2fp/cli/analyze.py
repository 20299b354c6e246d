"""``mgm2fp analyze``: CKA between block outputs and a proposed layer plan, plus helpers that ``convert --layer-plan auto`` shares."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.table import Table

from mgm2fp.cli.common import app, console, make_progress, tensor_loading_progress

if TYPE_CHECKING:
    from mgm2fp.analysis import LayerSimilarity, PlanProposal
    from mgm2fp.families.base import MaskedGenerativeModel

TIMESTEPS_HELP = "Comma-separated noise levels t in (0, 1] at which CKA is computed and then averaged."
DATA_HELP = "Analysis data: a .npy array of token ids, a text file, or a folder of them."
TOKENIZER_HELP = "Tokenizer folder or hub id for text data (default: the tokenizer files of the model folder)."
SEQ_LEN_HELP = "Tokens per sequence (default: the length the model was trained on)."


def run_analysis(
    model: MaskedGenerativeModel,
    *,
    data: Path,
    tokenizer: str | None,
    timesteps: str,
    num_sequences: int,
    seq_len: int | None,
    batch_size: int,
    tokens_per_sequence: int | None = None,
    seed: int = 0,
) -> LayerSimilarity:
    """Read the data and compute the CKA matrices with a progress bar over noise levels and batches."""
    from mgm2fp.analysis import analyze_layers, parse_timesteps, read_analysis_tokens

    levels = parse_timesteps(timesteps)
    tokens = read_analysis_tokens(model, data, tokenizer=tokenizer, seq_len=seq_len, num_sequences=num_sequences)
    with make_progress() as progress:
        task = progress.add_task(f"CKA over {len(levels)} noise levels", total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return analyze_layers(model, tokens, timesteps=levels, batch_size=batch_size, tokens_per_sequence=tokens_per_sequence, seed=seed, progress=update)


def print_report(similarity: LayerSimilarity, proposal: PlanProposal) -> None:
    """Print the consecutive CKA profile, the groups, the plan and the reasoning."""
    table = Table(title=f"CKA between consecutive blocks (mean over t = {', '.join(f'{t:g}' for t in similarity.timesteps)})")
    table.add_column("blocks", justify="right")
    table.add_column("CKA", justify="right")
    table.add_column("")
    for index, value in enumerate(similarity.consecutive.tolist()):
        marker = "boundary" if proposal.boundary is not None and index + 1 == proposal.boundary else ""
        table.add_row(f"{index} - {index + 1}", f"{value:.3f}", f"{'#' * round(value * 30)} {marker}".rstrip())
    console.print(table)
    console.print(
        f"{similarity.num_sequences} sequences x {similarity.seq_len} tokens, {similarity.tokens_per_level:,} tokens per noise level, "
        f"{similarity.estimator} estimator"
    )
    console.print(f"[bold]proposed plan:[/] {proposal.plan.describe()}")
    for line in proposal.reasoning:
        console.print(f"  - {line}", highlight=False)


def validate_init(init: str) -> None:
    """Reject an unknown ``--init`` before any weights are read (``central`` is resolved by the planner)."""
    from mgm2fp.layer_plan import parse_init

    if init.strip().lower() != "central":
        parse_init(init)


def load_full_model(source: str, *, revision: str | None, filename: str | None, dtype: str | None, num_heads: int | None, device: str) -> MaskedGenerativeModel:
    """Load every block of ``source`` (the analysis needs them all) with a progress bar."""
    from mgm2fp.loading import load

    options: dict[str, Any] = {"device": device}
    if dtype:
        options["dtype"] = dtype
    if num_heads is not None:
        options["num_heads"] = num_heads
    with tensor_loading_progress("reading source weights"):
        return load(source, revision=revision, filename=filename, **options)


@app.command()
def analyze(
    source: str = typer.Argument(..., help="Hub id (ORG/NAME), local folder or weights file of the source model."),
    data: Path = typer.Option(..., "--data", help=DATA_HELP),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write cka.json, plan.json and the figures to."),
    timesteps: str = typer.Option("0.1,0.3,0.5,0.7,0.9", help=TIMESTEPS_HELP),
    num_sequences: int = typer.Option(64, min=1, help="Number of sequences to analyse (fewer when the data is shorter)."),
    seq_len: Optional[int] = typer.Option(None, min=1, help=SEQ_LEN_HELP),
    batch_size: int = typer.Option(8, min=1, help="Sequences per forward pass."),
    tokens_per_sequence: Optional[int] = typer.Option(None, min=1, help="Random positions kept per sequence, for wide models where the D x D statistics do not fit (default: all)."),
    tokenizer: Optional[str] = typer.Option(None, help=TOKENIZER_HELP),
    num_pre: int = typer.Option(1, min=0, help="Blocks kept before the fixed point (a prefix)."),
    num_post: int = typer.Option(1, min=0, help="Blocks kept after the fixed point (the last blocks)."),
    fixed_point_group: str = typer.Option("tightest", help="Group that becomes the fixed-point range: tightest (higher mean CKA), late or early."),
    init: str = typer.Option("first", help="Shared block weights: first, middle, last, mean, central (highest mean CKA to the range) or a block index."),
    device: str = typer.Option("cpu", help="Device to run the model on, e.g. cuda."),
    dtype: Optional[str] = typer.Option(None, help="Run the model in float32, bfloat16 or float16 (default: as stored)."),
    seed: int = typer.Option(0, help="Seed of the masks and of the token subsample."),
    revision: Optional[str] = typer.Option(None, help="Branch, tag or commit of a hub source."),
    filename: Optional[str] = typer.Option(None, help="Weights file inside a hub repository or folder."),
    num_heads: Optional[int] = typer.Option(None, min=1, help="Attention heads, for checkpoints whose config does not name them."),
    overwrite: bool = typer.Option(False, help="Replace the output folder if it exists."),
) -> None:
    """Measure the linear CKA between every pair of blocks and propose a layer plan (plan.json) for convert."""
    from mgm2fp.analysis import parse_timesteps, propose_plan, save_analysis
    from mgm2fp.analysis.planner import FIXED_POINT_GROUPS, check_plan_options
    from mgm2fp.errors import ConfigError
    from mgm2fp.saving import atomic_directory

    # Fail before the model runs when the output exists or an option is invalid.
    if output.exists() and not overwrite:
        with atomic_directory(output, overwrite=False):
            pass
    parse_timesteps(timesteps)
    validate_init(init)
    if fixed_point_group not in FIXED_POINT_GROUPS:
        raise ConfigError(f"unknown fixed-point group '{fixed_point_group}'; use one of {', '.join(FIXED_POINT_GROUPS)}")

    model = load_full_model(source, revision=revision, filename=filename, dtype=dtype, num_heads=num_heads, device=device)
    check_plan_options(model.num_blocks, num_pre=num_pre, num_post=num_post, fixed_point_group=fixed_point_group)
    similarity = run_analysis(
        model,
        data=data,
        tokenizer=tokenizer,
        timesteps=timesteps,
        num_sequences=num_sequences,
        seq_len=seq_len,
        batch_size=batch_size,
        tokens_per_sequence=tokens_per_sequence,
        seed=seed,
    )
    proposal = propose_plan(similarity.matrix, num_pre=num_pre, num_post=num_post, init=init, fixed_point_group=fixed_point_group)
    print_report(similarity, proposal)
    written = save_analysis(similarity, proposal, output, overwrite=overwrite, extra={"source": source, "revision": revision, "data": str(data)})
    console.print(f"[green]saved[/] {written.folder}: {written.cka.name}, {written.plan.name}, {written.heatmap.name}, {written.consecutive.name}")
    console.print(f"convert with: mgm2fp convert {source} --layer-plan {written.plan} --output OUTPUT", highlight=False, soft_wrap=True)
