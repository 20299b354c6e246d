"""``mgm2fp quickstart``: convert the bundled model, sample it and compare it with its source."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from mgm2fp.cli.common import app, console, make_progress

BUNDLED = Path(__file__).resolve().parents[2] / "examples" / "tiny-pydocs"


@app.command()
def quickstart(
    examples: Path = typer.Option(BUNDLED, help="Folder with the bundled mdlm/, cofre/ and evaluator/ models."),
    budget: int = typer.Option(48, min=1, help="Block forward passes per sample trajectory (48 = four steps of the 12-block source)."),
    num_samples: int = typer.Option(16, min=1, help="Samples per model."),
    seq_len: int = typer.Option(128, min=2, help="Tokens per sample."),
    seed: int = typer.Option(0, help="Random seed of the sampler."),
    output: Optional[Path] = typer.Option(None, help="Folder for the converted model (default: a temporary folder)."),
) -> None:
    """Convert the bundled tiny MDLM, then sample it, its source and the bundled CoFRe model (with and without reuse) at one budget and compare them."""
    import mgm2fp
    from mgm2fp.errors import SourceNotFoundError
    from mgm2fp.evaluation.budgets import evaluate_budgets
    from mgm2fp.evaluation.text import Evaluator

    missing = [name for name in ("mdlm", "cofre", "evaluator") if not (examples / name).is_dir()]
    if missing:
        raise SourceNotFoundError(f"bundled models {', '.join(missing)} not found in '{examples}'; run from a clone of the repository or pass --examples")

    with tempfile.TemporaryDirectory(prefix="mgm2fp-quickstart-") as scratch:
        converted_folder = output or Path(scratch) / "converted"
        console.print(f"[bold]1.[/] mgm2fp convert {examples / 'mdlm'} --pre-layers 0 --fixed-point-layers 5 --post-layers 11 --output {converted_folder}")
        converted = mgm2fp.convert(examples / "mdlm", pre_layers="0", fixed_point_layers="5", post_layers="11")
        mgm2fp.save_pretrained(converted, converted_folder, overwrite=output is not None)

        evaluator = Evaluator.load(str(examples / "evaluator"))
        candidates = [
            ("MDLM source", mgm2fp.load(examples / "mdlm"), "none"),
            ("converted, not fine-tuned", mgm2fp.load(converted_folder), "none"),
            ("CoFRe (bundled)", mgm2fp.load(examples / "cofre"), "none"),
            ("CoFRe (bundled), 3SR warm starts", mgm2fp.load(examples / "cofre"), "3sr"),
        ]
        console.print(f"[bold]2.[/] sampling {num_samples} x {seq_len} tokens per model within {budget} block forward passes, scored by {examples / 'evaluator'}")
        rows = []
        with make_progress() as progress:
            task = progress.add_task("sampling", total=len(candidates))
            for label, model, reuse in candidates:
                result = evaluate_budgets(model, evaluator, budgets=[budget], num_samples=num_samples, seq_len=seq_len, reuse=reuse, seed=seed, num_examples=1)[0]
                rows.append((label, model, reuse, result))
                progress.advance(task)

    table = Table(title=f"budget {budget}: lower generative perplexity is better, at similar entropy")
    for column in ("model", "parameters", "reuse", "steps", "block passes", "gen PPL", "entropy"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for label, model, reuse, result in rows:
        table.add_row(label, f"{model.num_parameters():,}", reuse, str(result.num_steps), str(result.block_forward_passes), f"{result.gen_ppl:.1f}", f"{result.entropy:.2f}")
    console.print(table)
    for label, _, _, result in rows:
        console.print(f"[bold]{label}:[/] {result.examples[0][:200]!r}", highlight=False)
