"""``mgm2fp sample``: budgeted sampling to a JSON Lines file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mgm2fp.cli.common import app, console, make_progress, tensor_loading_progress, check_device


@app.command()
def sample(
    model: str = typer.Argument(..., help="Hub id, folder or weights file of a source model or a converted model."),
    output: Path = typer.Option(..., "--output", "-o", help="JSON Lines file to write, one object per sample."),
    budget: Optional[int] = typer.Option(None, min=1, help="Maximum transformer-block forward passes per trajectory (one batched block call counts once)."),
    num_samples: int = typer.Option(1, min=1, help="Number of samples."),
    seq_len: Optional[int] = typer.Option(None, min=1, help="Tokens per sample (default: the model's trained length)."),
    steps: Optional[int] = typer.Option(None, min=1, help="Denoising steps (default: derived from the budget)."),
    schedule: str = typer.Option("decreasing", help="How a fixed-point model's iterations are spread over the steps: decreasing, fixed or increasing."),
    reuse: str = typer.Option("3sr", help="Warm start of the fixed-point solver across steps: none, full or 3sr."),
    seed: int = typer.Option(0, help="Random seed; batch i uses seed + i."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Samples per batch; each batch is one trajectory with the whole budget (default: all at once)."),
    num_iterations: Optional[int] = typer.Option(None, min=1, help="Fixed-point iterations per step, spread by --schedule (default: from the budget)."),
    solver: str = typer.Option("picard", help="Fixed-point solver: picard or anderson."),
    tolerance: Optional[float] = typer.Option(None, min=0.0, help="Stop a sample's iterations once its relative residual falls below this value."),
    track_residuals: bool = typer.Option(False, help="Record the relative residual of every iteration."),
    gamma_min: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="3SR weight of still-masked tokens when none is visible (default: 0.75)."),
    gamma_max: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="3SR weight of still-masked tokens when all others are visible (default: 0.90)."),
    gamma_changed: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="3SR weight of tokens revealed or changed since the previous step (default: 0.2)."),
    top_p: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Nucleus sampling: keep the most likely tokens up to this probability mass."),
    cache: bool = typer.Option(True, help="Skip the forward pass of a step when the previous step changed nothing."),
    tokenizer: Optional[str] = typer.Option(None, help="Tokenizer name or folder for the decoded text, or 'none' (default: the model's)."),
    device: str = typer.Option("cpu", help="Device to sample on, such as cpu or cuda."),
    dtype: Optional[str] = typer.Option(None, help="Load the weights as float32, bfloat16 or float16 (default: as stored)."),
    revision: Optional[str] = typer.Option(None, help="Branch, tag or commit of a hub source."),
    overwrite: bool = typer.Option(False, help="Replace the output file if it exists."),
) -> None:
    """Sample from a model within a budget of block forward passes and write the samples as JSON Lines."""
    import mgm2fp
    from mgm2fp.saving import atomic_file
    from mgm2fp.sampling import plan_budget, sample_in_batches

    # Fail before loading any weights when the output exists.
    if output.exists() and not overwrite:
        with atomic_file(output, overwrite=False):
            pass
    options = {"device": check_device(device), **({"dtype": dtype} if dtype else {})}
    with tensor_loading_progress("reading weights"):
        loaded = mgm2fp.load(model, revision=revision, **options)

    plan = plan_budget(loaded, budget=budget, steps=steps, schedule=schedule, num_iterations=num_iterations)
    batch_size = batch_size or num_samples
    num_batches = -(-num_samples // batch_size)
    decode = (tokenizer or "").lower() != "none"
    family_options = {"cache": cache, **({"top_p": top_p} if top_p is not None else {})}
    progress = make_progress()
    task = progress.add_task(f"sampling ({plan.describe()})", total=plan.num_steps * num_batches)
    batches = sample_in_batches(
        loaded,
        num_samples,
        batch_size=batch_size or num_samples,
        seed=seed,
        tokenizer=tokenizer if decode else None,
        decode=decode,
        seq_len=seq_len,
        budget=budget,
        steps=steps,
        schedule=schedule,
        reuse=reuse,
        num_iterations=num_iterations,
        solver=solver,
        tolerance=tolerance,
        track_residuals=track_residuals,
        gamma_min=gamma_min,
        gamma_max=gamma_max,
        gamma_changed=gamma_changed,
        callback=lambda step: progress.advance(task),
        **family_options,
    )

    spent, seconds, written, results = 0, 0.0, 0, []
    with atomic_file(output, overwrite=overwrite) as handle, progress:
        for result in batches:
            for record in result.to_records(start_index=written, extra={"model": model}):
                handle.write(json.dumps(record) + "\n")
            written += len(result.tokens)
            spent = max(spent, result.block_forward_passes)
            seconds += result.seconds
            results.append(result)
    last = results[-1]
    iterations = f", iterations per step {last.iterations}" if last.iterations is not None else ""
    console.print(
        f"[green]wrote[/] {written} samples to {output}: {last.num_steps} steps, "
        f"at most {spent} block forward passes per trajectory" + (f" (budget {budget})" if budget else "") + f"{iterations}, {seconds:.1f} s"
    )

