"""``mgm2fp eval``: generative perplexity and entropy of a text model at several budgets."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from mgm2fp.cli.common import app, check_device, console, make_progress


@app.command("eval")
def evaluate(
    model_source: str = typer.Argument(..., metavar="MODEL", help="Source model or converted model (hub id, folder or file)."),
    evaluator: Optional[str] = typer.Option(None, help="Hugging Face causal LM that scores the samples (hub id or folder) [default: gpt2-large when the Hub is reachable]."),
    budgets: str = typer.Option("24,48,96", help="Comma-separated budgets, in block forward passes per sample trajectory."),
    num_samples: int = typer.Option(16, min=1, help="Samples per budget."),
    seq_len: Optional[int] = typer.Option(None, min=2, help="Tokens per sample (default: the length the model was trained on, else 128)."),
    reuse: str = typer.Option("3sr", help="Warm start of the fixed-point solver across steps: none, full or 3sr."),
    schedule: str = typer.Option("decreasing", help="How a budget is split into steps and iterations: decreasing, fixed or increasing."),
    steps: Optional[int] = typer.Option(None, min=1, help="Number of denoising steps [default: derived from the budget]."),
    seed: int = typer.Option(0, help="Random seed of the sampler."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Samples drawn per sampling call [default: all at once]."),
    tokenizer: Optional[str] = typer.Option(None, help="Tokenizer that decodes the samples, a hub name or folder (default: the model's own)."),
    reference_text: Optional[Path] = typer.Option(None, exists=True, dir_okay=False, help="Text file scored by the evaluator as a reference perplexity."),
    device: str = typer.Option("cpu", help="Device for the model and the evaluator, e.g. cuda."),
    output: Path = typer.Option(..., "--output", "-o", help="JSON file for the results."),
) -> None:
    """Sample MODEL at each budget and report generative perplexity, unigram entropy, block forward passes and tokens per second."""
    import mgm2fp
    from mgm2fp.evaluation.budgets import evaluate_budgets, parse_budgets
    from mgm2fp.evaluation.text import DEFAULT_EVALUATOR, Evaluator
    from mgm2fp.errors import ConfigError
    from mgm2fp.saving import atomic_file

    budget_list = parse_budgets(budgets)
    check_device(device)
    if output.is_dir():
        raise ConfigError(f"output '{output}' is a folder; give a JSON file path such as {output / 'results.json'}")
    if evaluator is None:
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
            raise ConfigError(f"no --evaluator given and HF_HUB_OFFLINE is set; pass --evaluator with a local causal LM folder (the default {DEFAULT_EVALUATOR} needs the Hub or its cache)")
        evaluator = DEFAULT_EVALUATOR
    model = mgm2fp.load(model_source, device=device)
    if seq_len is None:
        seq_len = int(model.config.get("model_length") or 128)
    scorer = Evaluator.load(evaluator, device=device)
    reference_ppl = None
    if reference_text is not None:
        reference_ppl = scorer.perplexity([reference_text.read_text()])

    with make_progress(transient=True) as progress:
        task = progress.add_task("sampling and scoring", total=len(budget_list))
        results = evaluate_budgets(
            model,
            scorer,
            budgets=budget_list,
            num_samples=num_samples,
            seq_len=seq_len,
            reuse=reuse,
            schedule=schedule,
            steps=steps,
            seed=seed,
            batch_size=batch_size,
            tokenizer=tokenizer,
            on_budget=lambda _: progress.advance(task),
        )

    report = {
        "model": model_source,
        "evaluator": evaluator,
        "reference_perplexity": reference_ppl,
        "results": [result.to_dict() for result in results],
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(output, overwrite=True) as handle:
        handle.write(json.dumps(report, indent=2) + "\n")

    table = Table(title=f"{model_source} scored by {evaluator}")
    for column in ("budget", "gen PPL", "entropy", "block passes", "steps", "tokens/s"):
        table.add_column(column, justify="right")
    for result in results:
        table.add_row(str(result.budget), f"{result.gen_ppl:.2f}", f"{result.entropy:.3f}", str(result.block_forward_passes), str(result.num_steps), f"{result.tokens_per_second:.1f}")
    console.print(table)
    if reference_ppl is not None:
        console.print(f"evaluator perplexity on the reference text: {reference_ppl:.2f}")
    console.print(f"[green]wrote[/] {output}")
