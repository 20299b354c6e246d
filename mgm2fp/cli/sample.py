"""``mgm2fp sample``: budgeted sampling to a JSON Lines file, and for image models a PNG grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from mgm2fp.cli.common import app, check_device, console, make_progress, tensor_loading_progress
from mgm2fp.errors import ConfigError


@app.command()
def sample(
    model: str = typer.Argument(..., help="Hub id, folder or weights file of a source model or a converted model."),
    output: Path = typer.Option(..., "--output", "-o", help="JSON Lines file to write, one object per sample."),
    budget: Optional[int] = typer.Option(None, min=1, help="Maximum transformer-block forward passes per trajectory (one batched block call counts once)."),
    num_samples: int = typer.Option(1, min=1, help="Number of samples."),
    seq_len: Optional[int] = typer.Option(None, min=1, help="Tokens per sample (default: the model's trained length). Image models sample whole token grids and reject any other length."),
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
    top_p: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Text models: nucleus sampling, keep the most likely tokens up to this probability mass."),
    cache: Optional[bool] = typer.Option(None, "--cache/--no-cache", help="Text models: skip the forward pass of a step when the previous step changed nothing (default: on)."),
    tokenizer: Optional[str] = typer.Option(None, help="Tokenizer name or folder for the decoded text, or 'none' (default: the model's)."),
    labels: Optional[str] = typer.Option(None, help="Image models: comma-separated class ids, repeated to fill --num-samples, or 'random' (default: unconditional)."),
    cfg_weight: Optional[float] = typer.Option(None, min=0.0, help="Image models: classifier-free guidance weight w; needs --labels (default: 0, no guidance)."),
    cfg_ramp: Optional[str] = typer.Option(None, help="Image models: guidance weight over the steps, linear (0 to w) or constant (default: the family's)."),
    order: Optional[str] = typer.Option(None, help="Image models: which cells a step reveals, halton or confidence (default: the family's)."),
    reveal_schedule: Optional[str] = typer.Option(None, help="Image models: cells revealed per step, arccos or cosine (default: arccos)."),
    temperature: Optional[float] = typer.Option(None, min=0.0, help="Image models: softmax temperature of the token draws, 0 for argmax (default: 1)."),
    gumbel_temperature: Optional[float] = typer.Option(None, min=0.0, help="Image models, confidence order: initial Gumbel noise on the confidence, annealed linearly to 0 (default: 4.5)."),
    decode: bool = typer.Option(False, "--decode", help="Image models: decode the token grids with --vq and write them as a PNG grid next to the output file."),
    vq: Optional[str] = typer.Option(None, help="VQ tokenizer weights for --decode: hub id (ORG/NAME/file), folder or file."),
    device: str = typer.Option("cpu", help="Device to sample on, such as cpu or cuda."),
    dtype: Optional[str] = typer.Option(None, help="Load the weights as float32, bfloat16 or float16 (default: as stored)."),
    revision: Optional[str] = typer.Option(None, help="Branch, tag or commit of a hub source."),
    overwrite: bool = typer.Option(False, help="Replace the output file if it exists."),
) -> None:
    """Sample from a model within a budget of block forward passes and write the samples as JSON Lines (image models: also a PNG grid with --decode)."""
    import mgm2fp
    from mgm2fp.saving import atomic_file
    from mgm2fp.sampling import plan_budget, sample_in_batches

    # Fail before loading any weights when an output exists or an option is invalid.
    image_path = output.with_suffix(".png")
    check_outputs(output, image_path if decode else None, vq=vq, decode=decode, overwrite=overwrite)
    class_labels = parse_labels(labels, num_samples)
    options = {"device": check_device(device), **({"dtype": dtype} if dtype else {})}
    with tensor_loading_progress("reading weights"):
        loaded = mgm2fp.load(model, revision=revision, **options)
    decoder = load_decoder(loaded, model, vq, device=device) if decode else None

    plan = plan_budget(loaded, budget=budget, steps=steps, schedule=schedule, num_iterations=num_iterations)
    batch_size = batch_size or num_samples
    num_batches = -(-num_samples // batch_size)
    decode_text = (tokenizer or "").lower() != "none"
    family_options = {
        name: value
        for name, value in {
            "cache": cache,
            "top_p": top_p,
            "labels": class_labels,
            "cfg_weight": cfg_weight,
            "cfg_ramp": cfg_ramp,
            "order": order,
            "reveal_schedule": reveal_schedule,
            "temperature": temperature,
            "gumbel_temperature": gumbel_temperature,
        }.items()
        if value is not None
    }
    progress = make_progress()
    task = progress.add_task(f"sampling ({plan.describe()})", total=plan.num_steps * num_batches)
    batches = sample_in_batches(
        loaded,
        num_samples,
        batch_size=batch_size or num_samples,
        seed=seed,
        tokenizer=tokenizer if decode_text else None,
        decode=decode_text,
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
    if decoder is not None:
        write_image_grid(decoder, results, image_path)


def parse_labels(text: Optional[str], num_samples: int) -> Any:
    """Turn ``--labels`` into ``"random"`` or ``num_samples`` class ids (the list repeats as needed)."""
    if text is None or text.strip().lower() == "random":
        return None if text is None else "random"
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ConfigError(f"--labels '{text}' is invalid; pass comma-separated class ids such as 0,3,7, or 'random'") from error
    if not ids:
        raise ConfigError("--labels is empty; pass comma-separated class ids such as 0,3,7, or 'random'")
    return [ids[index % len(ids)] for index in range(num_samples)]


def check_outputs(output: Path, image_path: Optional[Path], *, vq: Optional[str], decode: bool, overwrite: bool) -> None:
    """Reject existing outputs (without --overwrite) and an incomplete --decode / --vq pair before any loading."""
    from mgm2fp.saving import atomic_file

    if decode and vq is None:
        raise ConfigError("--decode needs the VQ tokenizer weights; pass --vq with a hub id (ORG/NAME/file), folder or file")
    if vq is not None and not decode:
        raise ConfigError("--vq only applies with --decode; add --decode to write the PNG grid")
    if image_path is not None and image_path == output:
        raise ConfigError(f"--output {output} would be overwritten by the PNG grid; give the JSON Lines file another suffix, such as .jsonl")
    for path in (output, image_path):
        if path is not None and path.exists() and not overwrite:
            with atomic_file(path, overwrite=False):
                pass


def load_decoder(loaded: Any, model: str, vq: str, *, device: str) -> Any:
    """Load the VQ decoder for --decode and check that it fits the model's codebook."""
    from mgm2fp.images import image_tokenizer_kind
    from mgm2fp.vq import load_vq_decoder

    if image_tokenizer_kind(loaded) is None:
        raise ConfigError(f"--decode writes images, but '{model}' is a text model; leave out --decode and --vq")
    with tensor_loading_progress("reading the VQ decoder"):
        decoder = load_vq_decoder(vq, device=device)
    codebook = loaded.vocab_size - 1  # the logits cover the codebook and the mask code
    if decoder.config.codebook_size != codebook:
        raise ConfigError(f"the VQ decoder '{vq}' has {decoder.config.codebook_size} codes but the model's codebook has {codebook}; pass the tokenizer the model was trained with")
    return decoder


def write_image_grid(decoder: Any, results: list[Any], path: Path) -> None:
    """Decode every sample's token grid and write one PNG grid."""
    import torch

    from mgm2fp.images import decode_tokens, save_image_grid

    codes = torch.cat([result.tokens for result in results])  # [N, grid * grid]
    images = decode_tokens(decoder, codes)
    save_image_grid(images, path)
    console.print(f"[green]wrote[/] {path}: {images.shape[0]} images of {images.shape[-2]}x{images.shape[-1]} pixels ({decoder.kind} tokenizer)")
