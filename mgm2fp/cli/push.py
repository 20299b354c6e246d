"""``mgm2fp push``: upload a saved fixed-point model to the Hugging Face Hub with a regenerated model card."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.rule import Rule
from rich.table import Table

from mgm2fp.cli.common import app, console, err_console


def format_size(num_bytes: int) -> str:
    """Return a byte count in B, KiB, MiB or GiB."""
    size = float(num_bytes)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


@app.command()
def push(
    folder: Path = typer.Argument(..., help="Model folder written by mgm2fp convert or mgm2fp finetune."),
    repo_id: str = typer.Argument(..., help="Hub repository NAMESPACE/NAME (created if it does not exist)."),
    private: bool = typer.Option(False, "--private", help="Create the repository as private (ignored when it exists)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch to commit to; created from main if it does not exist (default: main)."),
    create_pr: bool = typer.Option(False, "--create-pr", help="Open a pull request against main instead of committing to it."),
    commit_message: Optional[str] = typer.Option(None, "--commit-message", help="Commit title (default: names the family and the source model)."),
    eval_results: Optional[Path] = typer.Option(None, "--eval-results", help="mgm2fp eval output to put in the card and upload as eval_results.json (default: the folder's eval_results.json)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the files and print the card that would be uploaded; needs no token and no network."),
) -> None:
    """Upload a fixed-point model folder to the Hugging Face Hub with a model card.

    The token comes from HF_TOKEN or the login cached by `hf auth login`. The folder is not changed:
    the card is regenerated from its config, recipe and evaluation results for the upload only.
    """
    from mgm2fp.publish import plan_push, push_to_hub

    if dry_run:
        plan = plan_push(folder, repo_id, eval_results_path=eval_results)
        _print_plan(plan)
        return
    with err_console.status(f"uploading {folder} to {repo_id}"):
        result = push_to_hub(
            folder,
            repo_id,
            private=private,
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message,
            eval_results_path=eval_results,
        )
    console.print(f"[green]pushed[/] {len(result.files)} files to {result.repo_url} (revision {result.revision})", highlight=False, soft_wrap=True)
    console.print(f"commit: {result.commit_url}", highlight=False, soft_wrap=True)
    if result.pull_request_url:
        console.print(f"pull request: {result.pull_request_url}", highlight=False, soft_wrap=True)


def _print_plan(plan) -> None:
    table = Table(title=f"dry run: files that would be uploaded to {plan.repo_id}")
    table.add_column("file")
    table.add_column("size", justify="right")
    for file in plan.files:
        table.add_row(file.path_in_repo + (" (regenerated card)" if file.source is None else ""), format_size(file.size))
    table.add_row("[bold]total[/]", f"[bold]{format_size(plan.total_bytes)}[/]")
    console.print(table)
    if plan.skipped:
        console.print("not uploaded: " + ", ".join(plan.skipped), highlight=False, markup=False, soft_wrap=True)
    console.print(Rule("README.md"))
    console.print(plan.card, markup=False, highlight=False, soft_wrap=True)
