"""Pre-train a small MDLM (the kuleshov-group/mdlm-owt DiT) on a corpus written by ``mgm2fp.data.corpus``.

The objective is MDLM's (Sahoo et al., arXiv 2406.07524): absorbing-state diffusion with the
log-linear schedule, SUBS parameterisation and antithetic time sampling, as implemented in
``mgm2fp.training.objectives``. Training uses AdamW with linear warm-up and cosine decay and
gradient clipping at 1.0. Every ``--checkpoint-minutes`` the model, optimizer, scheduler, random
states and step go to ``OUTPUT/checkpoint.pt`` (read back with ``torch.load(weights_only=True)``);
``--resume`` continues from it. ``OUTPUT/metrics.jsonl`` gets one line per logged step and per
validation. The final model is saved in the mdlm-owt layout (tokenizer included) to ``--save-to``
(default ``OUTPUT/mdlm``).

Example (the tiny-pydocs model, see docs/tiny-pydocs.md):

    nice -n 10 python scripts/pretrain_mdlm.py --corpus /work/runs/tiny-pydocs/corpus \\
        --tokenizer /work/runs/tiny-pydocs/tokenizer --output /work/runs/tiny-pydocs/pretrain
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from mgm2fp.data.corpus import read_documents
from mgm2fp.families.mdlm import MDLMDiT
from mgm2fp.families.mdlm_export import save_mdlm_checkpoint
from mgm2fp.training.objectives import LogLinearSchedule, mask_tokens, mdlm_loss, sample_times

logger = logging.getLogger("pretrain_mdlm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="folder with train.txt and validation.txt")
    parser.add_argument("--tokenizer", type=Path, required=True, help="Hugging Face tokenizer folder")
    parser.add_argument("--output", type=Path, required=True, help="run folder: checkpoint, metrics, final model")
    parser.add_argument("--hidden-dim", type=int, default=192)
    parser.add_argument("--cond-dim", type=int, default=128)
    parser.add_argument("--n-blocks", type=int, default=12)
    parser.add_argument("--n-heads", type=int, default=3, help="attention heads (3 gives head size 64, as in mdlm-owt)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per training sequence (model_length)")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per step")
    parser.add_argument("--max-steps", type=int, default=2000, help="training steps (upper limit with --time-budget-minutes)")
    parser.add_argument("--time-budget-minutes", type=float, default=None, help="end training after this much training time even before --max-steps")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--min-lr-ratio", type=float, default=0.1, help="final learning rate as a fraction of the peak")
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--log-every", type=int, default=10, help="steps between metric lines")
    parser.add_argument("--eval-every", type=int, default=250, help="steps between validations (0: only at the end)")
    parser.add_argument("--eval-sequences", type=int, default=128, help="validation sequences per evaluation")
    parser.add_argument("--eval-repeats", type=int, default=2, help="noise draws per validation sequence")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt")
    parser.add_argument("--stop-at-step", type=int, default=None, help="write a checkpoint and exit at this step, keeping the schedule of --max-steps (continue with --resume)")
    parser.add_argument("--save-to", type=Path, default=None, help="folder of the final model (default OUTPUT/mdlm)")
    parser.add_argument("--save-dtype", default="fp16", help="dtype of the final model.safetensors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser.parse_args(argv)


# Data ---------------------------------------------------------------------------------------------


def packed_tokens(corpus: Path, split: str, tokenizer, cache_folder: Path) -> np.ndarray:
    """Tokenize every document of ``split``, each followed by EOS, into one uint16 array (cached in ``cache_folder``)."""
    cache = cache_folder / f"tokens-{split}.npy"
    if cache.is_file():
        return np.load(cache)
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for document in read_documents(corpus / f"{split}.txt"):
        ids.extend(tokenizer(document, add_special_tokens=False)["input_ids"])
        ids.append(eos)
    array = np.asarray(ids, dtype=np.uint16 if len(tokenizer) < 2**16 else np.int32)
    temporary = cache.with_suffix(".tmp.npy")
    np.save(temporary, array)
    os.replace(temporary, cache)
    logger.info("%s: %d tokens from %s", split, len(array), corpus / f"{split}.txt")
    return array


def random_windows(tokens: np.ndarray, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """Cut ``batch`` windows of ``length`` tokens at uniform random offsets of the packed stream: ``[B, L]``."""
    starts = torch.randint(0, len(tokens) - length + 1, (batch,), generator=generator).tolist()
    return torch.from_numpy(np.stack([tokens[start : start + length] for start in starts]).astype(np.int64))


def validation_windows(tokens: np.ndarray, count: int, length: int) -> torch.Tensor:
    """Cut ``count`` non-overlapping windows spread evenly over the validation stream: ``[N, L]``."""
    available = len(tokens) // length
    if available == 0:
        raise SystemExit(f"validation split has {len(tokens)} tokens, fewer than one sequence of {length}; rebuild the corpus with a larger validation fraction")
    chosen = np.linspace(0, available - 1, num=min(count, available)).astype(np.int64)
    return torch.from_numpy(np.stack([tokens[i * length : (i + 1) * length] for i in chosen]).astype(np.int64))


# Model and optimisation -------------------------------------------------------------------------


def build_model(args: argparse.Namespace, vocab_size: int) -> MDLMDiT:
    config = {
        "model_type": "mdlm",
        "hidden_dim": args.hidden_dim,
        "cond_dim": args.cond_dim,
        "n_blocks": args.n_blocks,
        "n_heads": args.n_heads,
        "vocab_size": vocab_size,
        "model_length": args.seq_len,
        "dropout": args.dropout,
        "time_conditioning": False,
    }
    return MDLMDiT(config)


class TrainingSchedule:
    """Linear warm-up then cosine decay, over a step count or a wall-clock budget, whichever ends first.

    Progress is ``max(step / max_steps, elapsed / time_budget)``, so on a fast machine the run
    takes exactly ``max_steps`` steps and on a slow or shared one it ends on time with a fully
    decayed learning rate. The learning rate depends only on the step and the elapsed time,
    which checkpoints store, so resuming continues the same curve.
    """

    def __init__(self, *, peak_lr: float, warmup_steps: int, max_steps: int, time_budget_seconds: float | None, min_lr_ratio: float) -> None:
        self.peak_lr = peak_lr
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        self.time_budget_seconds = time_budget_seconds
        self.min_lr_ratio = min_lr_ratio

    def progress(self, step: int, elapsed_seconds: float) -> float:
        by_steps = step / self.max_steps
        by_time = elapsed_seconds / self.time_budget_seconds if self.time_budget_seconds else 0.0
        return min(1.0, max(by_steps, by_time))

    def finished(self, step: int, elapsed_seconds: float) -> bool:
        return self.progress(step, elapsed_seconds) >= 1.0

    def learning_rate(self, step: int, elapsed_seconds: float) -> float:
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        cosine = 0.5 * (1 + math.cos(math.pi * self.progress(step, elapsed_seconds)))
        return self.peak_lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine)

    def state_dict(self) -> dict:
        return dict(vars(self))


def set_learning_rate(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value


def diffusion_loss(model: MDLMDiT, x0: torch.Tensor, generator: torch.Generator, schedule: LogLinearSchedule) -> torch.Tensor:
    """Estimate the MDLM negative ELBO (nats per token) of ``x0`` ``[B, L]`` with one noise draw per sequence."""
    t = sample_times(x0.shape[0], eps=schedule.eps, antithetic=True, generator=generator)  # [B]
    xt = mask_tokens(x0, schedule.move_chance(t), model.mask_token_id, generator=generator)  # [B, L]
    logits = model(xt, schedule.sigma(t))  # [B, L, V]
    return mdlm_loss(logits, x0, xt, t, mask_token_id=model.mask_token_id, schedule=schedule)


@torch.no_grad()
def evaluate(model: MDLMDiT, windows: torch.Tensor, *, repeats: int, batch_size: int, seed: int, schedule: LogLinearSchedule) -> float:
    """Average the negative ELBO (nats per token) over ``windows``, with the same noise at every evaluation."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for _ in range(repeats):
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            total += diffusion_loss(model, batch, generator, schedule).item() * len(batch)
            count += len(batch)
    model.train(was_training)
    return total / count


# Checkpoints --------------------------------------------------------------------------------------


def save_checkpoint(path: Path, *, model, optimizer, scheduler: TrainingSchedule, step: int, data_generator: torch.Generator, noise_generator: torch.Generator, elapsed: float) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "elapsed_seconds": elapsed,
        "torch_rng": torch.get_rng_state(),
        "data_rng": data_generator.get_state(),
        "noise_rng": noise_generator.get_state(),
    }
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)
    logger.info("checkpoint at step %d written to %s", step, path)


def load_checkpoint(path: Path, *, model, optimizer, data_generator: torch.Generator, noise_generator: torch.Generator) -> tuple[int, float]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    data_generator.set_state(state["data_rng"])
    noise_generator.set_state(state["noise_rng"])
    logger.info("resumed from %s at step %d", path, state["step"])
    return int(state["step"]), float(state["elapsed_seconds"])


def append_metrics(path: Path, record: dict) -> None:
    with path.open("a") as file:
        file.write(json.dumps(record) + "\n")


# Main loop ----------------------------------------------------------------------------------------


def train(args: argparse.Namespace) -> Path | None:
    """Run the training described by ``args``; return the folder of the final model (None after ``--stop-at-step``)."""
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    args.output.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    tokenizer = AutoTokenizer.from_pretrained(str(args.tokenizer))
    train_tokens = packed_tokens(args.corpus, "train", tokenizer, args.output)
    validation = validation_windows(packed_tokens(args.corpus, "validation", tokenizer, args.output), args.eval_sequences, args.seq_len)

    torch.manual_seed(args.seed)
    model = build_model(args, vocab_size=len(tokenizer) + 1)  # the mask id is the last one
    logger.info("model: %d parameters, vocabulary %d (mask id %d)", sum(p.numel() for p in model.parameters()), model.vocab_size, model.mask_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=args.weight_decay)
    time_budget = args.time_budget_minutes * 60 if args.time_budget_minutes else None
    scheduler = TrainingSchedule(peak_lr=args.lr, warmup_steps=args.warmup_steps, max_steps=args.max_steps, time_budget_seconds=time_budget, min_lr_ratio=args.min_lr_ratio)
    data_generator = torch.Generator().manual_seed(args.seed + 1)
    noise_generator = torch.Generator().manual_seed(args.seed + 2)
    checkpoint_path = args.output / "checkpoint.pt"
    metrics_path = args.output / "metrics.jsonl"

    step, elapsed_before = 0, 0.0
    if args.resume:
        if not checkpoint_path.is_file():
            raise SystemExit(f"--resume given but {checkpoint_path} does not exist; start without --resume")
        step, elapsed_before = load_checkpoint(checkpoint_path, model=model, optimizer=optimizer, data_generator=data_generator, noise_generator=noise_generator)
    model, optimizer = accelerator.prepare(model, optimizer)
    schedule = LogLinearSchedule()
    unwrapped = accelerator.unwrap_model(model)

    start_time = time.monotonic()
    last_checkpoint = start_time
    model.train()
    elapsed = elapsed_before
    while not scheduler.finished(step, elapsed):
        step_start = time.monotonic()
        learning_rate = scheduler.learning_rate(step, elapsed)
        set_learning_rate(optimizer, learning_rate)
        x0 = random_windows(train_tokens, args.batch_size, args.seq_len, data_generator).to(accelerator.device)
        loss = diffusion_loss(unwrapped, x0, noise_generator, schedule)
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed = elapsed_before + time.monotonic() - start_time
        last_step = scheduler.finished(step, elapsed)

        if step % args.log_every == 0 or step == 1 or last_step:
            record = {"step": step, "loss": loss.item(), "lr": learning_rate, "grad_norm": float(grad_norm), "step_seconds": time.monotonic() - step_start, "elapsed_seconds": elapsed}
            append_metrics(metrics_path, record)
            logger.info("step %d loss %.4f lr %.2e grad %.2f (%.2f s/step)", step, record["loss"], record["lr"], record["grad_norm"], record["step_seconds"])
        if (args.eval_every and step % args.eval_every == 0) or last_step:
            nll = evaluate(unwrapped, validation, repeats=args.eval_repeats, batch_size=args.batch_size, seed=args.seed + 3, schedule=schedule)
            append_metrics(metrics_path, {"step": step, "validation_nll": nll, "validation_perplexity": math.exp(nll), "elapsed_seconds": elapsed})
            logger.info("step %d validation ELBO perplexity %.2f (%.4f nats/token)", step, math.exp(nll), nll)
        if time.monotonic() - last_checkpoint >= args.checkpoint_minutes * 60 or last_step:
            save_checkpoint(checkpoint_path, model=unwrapped, optimizer=optimizer, scheduler=scheduler, step=step, data_generator=data_generator, noise_generator=noise_generator, elapsed=elapsed)
            last_checkpoint = time.monotonic()
        if args.stop_at_step is not None and step >= args.stop_at_step and not last_step:
            save_checkpoint(checkpoint_path, model=unwrapped, optimizer=optimizer, scheduler=scheduler, step=step, data_generator=data_generator, noise_generator=noise_generator, elapsed=elapsed)
            logger.info("stopped at step %d as requested; continue with --resume", step)
            return None

    unwrapped.eval()
    final = save_mdlm_checkpoint(unwrapped, args.save_to or args.output / "mdlm", tokenizer=tokenizer, dtype=args.save_dtype)
    logger.info("final model written to %s", final)
    return final


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    train(parse_args(argv))


if __name__ == "__main__":
    main()
