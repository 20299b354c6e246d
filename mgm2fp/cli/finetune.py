"""``mgm2fp finetune``: every recipe field is also a flag, generated from the recipe schema.

Run it under ``accelerate launch`` for several GPUs or nodes (DDP, FSDP or DeepSpeed as
``accelerate config`` chose); the progress bar and the summary appear on the main process only.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any, List, Optional, Tuple

import typer

from mgm2fp.cli.common import app, console, make_progress
from mgm2fp.training.recipe import Recipe

# Fields set through their own options below, or not meaningful on the command line.
SKIPPED_FIELDS = {"lora"}


def _option_type(annotation: Any) -> Any:
    """Return the typer type of a recipe field: Literal becomes str, tuples keep their arity, lists repeat."""
    origin = typing.get_origin(annotation)
    arguments = [argument for argument in typing.get_args(annotation) if argument is not type(None)]
    if origin is typing.Union:
        return _option_type(arguments[0])
    if origin is typing.Literal:
        return str
    if origin is tuple:
        return Tuple[tuple(_option_type(argument) for argument in arguments)]  # type: ignore[misc]
    if origin is list:
        return List[_option_type(arguments[0])]  # type: ignore[misc]
    return annotation


def recipe_parameters() -> list[inspect.Parameter]:
    """Build one keyword-only typer option per recipe field, defaulting to None (keep the recipe's value)."""
    parameters = []
    for name, field in Recipe.model_fields.items():
        if name in SKIPPED_FIELDS:
            continue
        kind = _option_type(field.annotation)
        flag = "--" + name.replace("_", "-")
        declarations = [f"{flag}/--no-{name.replace('_', '-')}"] if kind is bool else [flag]
        help_text = field.description or ""
        default = field.get_default(call_default_factory=True)
        if default not in (None, [], ()):
            help_text += f" [recipe default: {default}]"
        option = typer.Option(None, *declarations, help=help_text, show_default=False, rich_help_panel="Recipe fields")
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=Optional[kind]))
    return parameters


def parse_iteration_ranges(text: str) -> list[tuple[int, Optional[int]]]:
    """Parse ``0-1,2-`` into ``[(0, 1), (2, None)]``."""
    ranges: list[tuple[int, Optional[int]]] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            ranges.append((int(first), int(last) if last else None))
        except ValueError:
            raise typer.BadParameter(f"'{part}' is not a range like 0-1 or 2- (open end)", param_hint="--lora-iterations") from None
    return ranges


def finetune_command(
    model: str,
    data: str,
    output: Path,
    recipe: Optional[str],
    resume: bool,
    resume_from: Optional[Path],
    overwrite: bool,
    lora_rank: Optional[int],
    lora_alpha: Optional[float],
    lora_dropout: Optional[float],
    lora_target: Optional[List[str]],
    lora_iterations: Optional[str],
    lora_merge: Optional[bool],
    **fields: Any,
) -> None:
    """Fine-tune a fixed-point model (or train a plain MGM) with the MDLM loss, teacher KL and consistency loss."""
    from mgm2fp.training.engine import finetune, process_state

    overrides = {name: value for name, value in fields.items() if value is not None and value != [] and value != ()}
    lora = {"rank": lora_rank, "alpha": lora_alpha, "dropout": lora_dropout, "target_modules": lora_target or None, "merge_on_save": lora_merge}
    if lora_iterations:
        lora["iteration_ranges"] = parse_iteration_ranges(lora_iterations)
    if any(value is not None for value in lora.values()):
        overrides["lora"] = {key: value for key, value in lora.items() if value is not None}

    is_main = process_state().is_main_process
    progress = make_progress(transient=False)
    task = progress.add_task("fine-tuning", total=None)

    def report(step: int, max_steps: int, record: dict[str, Any]) -> None:
        progress.update(task, completed=step, total=max_steps, description=f"fine-tuning loss {record['loss']:.4f}")

    with progress if is_main else _NoProgress():
        result = finetune(
            model,
            data,
            output_dir=output,
            recipe=recipe,
            resume=resume_from if resume_from is not None else resume,
            overwrite=overwrite,
            progress=report if is_main else None,
            **overrides,
        )
    if is_main:
        losses = ", ".join(f"{name} {value:.4f}" for name, value in result.final_losses.items() if value is not None)
        perplexity = "" if result.validation_perplexity is None else f", validation perplexity {result.validation_perplexity:.3f}"
        console.print(f"[green]saved[/] {result.output_dir} after {result.steps} steps: {losses}{perplexity}")


class _NoProgress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _build_signature() -> inspect.Signature:
    fixed = [
        inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=typer.Argument(..., help="Fixed-point model (or plain MGM) to train: hub id, folder or weights file."), annotation=str),
        inspect.Parameter("data", inspect.Parameter.KEYWORD_ONLY, default=typer.Option(..., "--data", help="Training data: text file or folder, .npy/.bin token ids, or a Hugging Face dataset (saved folder or name)."), annotation=str),
        inspect.Parameter("output", inspect.Parameter.KEYWORD_ONLY, default=typer.Option(..., "--output", "-o", help="Folder for the trained model, metrics.jsonl and checkpoints/."), annotation=Path),
        inspect.Parameter("recipe", inspect.Parameter.KEYWORD_ONLY, default=typer.Option(None, "--recipe", help="Recipe YAML file or shipped recipe name (mdlm-owt-adapt, mdlm-owt-consistency); flags override its fields."), annotation=Optional[str]),
        inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, default=typer.Option(False, "--resume", help="Continue from the latest checkpoint in --output at its exact step."), annotation=bool),
        inspect.Parameter("resume_from", inspect.Parameter.KEYWORD_ONLY, default=typer.Option(None, "--resume-from", help="Continue from this checkpoint folder (output/checkpoints/step-N)."), annotation=Optional[Path]),
        inspect.Parameter("overwrite", inspect.Parameter.KEYWORD_ONLY, default=typer.Option(False, "--overwrite", help="Delete an earlier run in --output and start over."), annotation=bool),
        inspect.Parameter("lora_rank", inspect.Parameter.KEYWORD_ONLY, default=typer.Option(None, "--lora-rank", help="Train LoRA adapters of this rank on the shared block instead of the full model.", rich_help_panel="LoRA"), annotation=Optional[int]),
        inspect.Parameter("lora_alpha", inspect.Parameter.KEYWORD_ONLY, default=typer.Option(None, "--lora-alpha", help="LoRA alpha (the update is scaled by alpha / rank) [default: 16].", rich_help_panel="LoRA"), annotation=Optional[float]),
        inspect.Parameter("lora_dropout", inspect.Parameter.KEYWORD_ONLY, default=typer.Option(None, "--lora-dropout", help="Dropout on the LoRA input [default: 0].", rich_help_panel="LoRA"), annotation=Optional[float]),
        inspect.Parameter("lora_target", inspect.Parameter.KEYWORD_ONLY, default=typer.Option(None, "--lora-target", help="Linear layer of the shared block to adapt, e.g. attn_qkv (repeatable) [default: all].", rich_help_panel="LoRA"), annotation=Optional[List[str]]),
        inspect.Parameter("lora_iterations", inspect.Parameter.KEYWORD_ONLY, default=typer.Option(None, "--lora-iterations", help="One adapter per range of solver iterations, e.g. 0-1,2- [default: one adapter].", rich_help_panel="LoRA"), annotation=Optional[str]),
        inspect.Parameter("lora_merge", inspect.Parameter.KEYWORD_ONLY, default=typer.Option(None, "--lora-merge/--no-lora-merge", help="Merge a single adapter into the shared block on save [default: merge].", rich_help_panel="LoRA"), annotation=Optional[bool]),
    ]
    return inspect.Signature([*fixed, *recipe_parameters()])


def _finetune(**kwargs: Any) -> None:
    finetune_command(**kwargs)


_finetune.__signature__ = _build_signature()  # type: ignore[attr-defined]
_finetune.__doc__ = finetune_command.__doc__
app.command(name="finetune")(_finetune)
