"""Train a small GPT-2 (transformers ``GPT2LMHeadModel``) as the generative-perplexity evaluator of a corpus.

Next-token cross-entropy on random windows of the packed training split (documents joined by
EOS), AdamW with linear warm-up and cosine decay, gradient clipping at 1.0, a checkpoint every
``--checkpoint-minutes`` (``--resume`` continues from it) and ``metrics.jsonl``. At the end the
validation and held-out perplexities over non-overlapping windows are logged, and the model
(``save_pretrained``, fp16 by default) and the tokenizer go to ``--save-to`` (default
``OUTPUT/evaluator``).

Example (the tiny-pydocs evaluator, see docs/tiny-pydocs.md):

    nice -n 10 python scripts/train_evaluator.py --corpus /work/runs/tiny-pydocs/corpus \\
        --tokenizer /work/runs/tiny-pydocs/tokenizer --output /work/runs/tiny-pydocs/evaluator-run
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_mdlm import TrainingSchedule, append_metrics, packed_tokens, random_windows, set_learning_rate  # noqa: E402

from mgm2fp.dtypes import parse_dtype  # noqa: E402
from mgm2fp.families.mdlm_export import save_tokenizer  # noqa: E402
from mgm2fp.saving import atomic_directory  # noqa: E402

logger = logging.getLogger("train_evaluator")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="folder with train.txt, validation.txt and heldout.txt")
    parser.add_argument("--tokenizer", type=Path, required=True, help="Hugging Face tokenizer folder")
    parser.add_argument("--output", type=Path, required=True, help="run folder: checkpoint, metrics, final model")
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=192)
    parser.add_argument("--n-head", type=int, default=3)
    parser.add_argument("--context", type=int, default=256, help="n_positions and training window length")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-steps", type=int, default=800, help="training steps (upper limit with --time-budget-minutes)")
    parser.add_argument("--time-budget-minutes", type=float, default=None, help="end training after this much training time even before --max-steps")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-lr-ratio", type=float, default=0.1)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=200, help="steps between validations (0: only at the end)")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt")
    parser.add_argument("--save-to", type=Path, default=None, help="folder of the final evaluator (default OUTPUT/evaluator)")
    parser.add_argument("--save-dtype", default="fp16", help="dtype of the saved weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def build_model(args: argparse.Namespace, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=args.context,
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        resid_pdrop=args.dropout,
        embd_pdrop=args.dropout,
        attn_pdrop=args.dropout,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return GPT2LMHeadModel(config)


@torch.no_grad()
def perplexity(model, tokens: np.ndarray, context: int, batch_size: int) -> tuple[float, int]:
    """Compute the next-token perplexity over non-overlapping windows of ``context`` tokens and the number of predicted tokens."""
    was_training = model.training
    model.eval()
    count = len(tokens) // context
    windows = torch.from_numpy(tokens[: count * context].astype(np.int64)).view(count, context)  # [N, C]
    total, predicted = 0.0, 0
    for start in range(0, count, batch_size):
        batch = windows[start : start + batch_size]
        loss = model(input_ids=batch, labels=batch).loss  # mean over the C - 1 predicted positions
        total += loss.item() * batch.numel() - loss.item() * len(batch)
        predicted += batch.numel() - len(batch)
    model.train(was_training)
    return math.exp(total / max(1, predicted)), predicted


def save_checkpoint(path: Path, *, model, optimizer, scheduler, step: int, data_generator: torch.Generator, elapsed: float) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step, "elapsed_seconds": elapsed, "torch_rng": torch.get_rng_state(), "data_rng": data_generator.get_state()}
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)
    logger.info("checkpoint at step %d written to %s", step, path)


def train(args: argparse.Namespace) -> Path:
    """Run the training described by ``args``; return the folder of the saved evaluator."""
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    args.output.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(args.tokenizer))
    train_tokens = packed_tokens(args.corpus, "train", tokenizer, args.output)
    validation_tokens = packed_tokens(args.corpus, "validation", tokenizer, args.output)

    torch.manual_seed(args.seed)
    model = build_model(args, tokenizer)
    logger.info("evaluator: %d parameters", sum(p.numel() for p in model.parameters()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=args.weight_decay)
    time_budget = args.time_budget_minutes * 60 if args.time_budget_minutes else None
    scheduler = TrainingSchedule(peak_lr=args.lr, warmup_steps=args.warmup_steps, max_steps=args.max_steps, time_budget_seconds=time_budget, min_lr_ratio=args.min_lr_ratio)
    data_generator = torch.Generator().manual_seed(args.seed + 1)
    checkpoint_path = args.output / "checkpoint.pt"
    metrics_path = args.output / "metrics.jsonl"

    step, elapsed_before = 0, 0.0
    if args.resume:
        if not checkpoint_path.is_file():
            raise SystemExit(f"--resume given but {checkpoint_path} does not exist; start without --resume")
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        data_generator.set_state(state["data_rng"])
        step, elapsed_before = int(state["step"]), float(state["elapsed_seconds"])
        logger.info("resumed from %s at step %d", checkpoint_path, step)

    start_time = last_checkpoint = time.monotonic()
    model.train()
    elapsed = elapsed_before
    while not scheduler.finished(step, elapsed):
        step_start = time.monotonic()
        learning_rate = scheduler.learning_rate(step, elapsed)
        set_learning_rate(optimizer, learning_rate)
        batch = random_windows(train_tokens, args.batch_size, args.context, data_generator)  # [B, C]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed = elapsed_before + time.monotonic() - start_time
        last_step = scheduler.finished(step, elapsed)

        if step % args.log_every == 0 or step == 1 or last_step:
            record = {"step": step, "loss": loss.item(), "lr": learning_rate, "grad_norm": float(grad_norm), "step_seconds": time.monotonic() - step_start, "elapsed_seconds": elapsed}
            append_metrics(metrics_path, record)
            logger.info("step %d loss %.4f lr %.2e (%.2f s/step)", step, record["loss"], record["lr"], record["step_seconds"])
        if args.eval_every and step % args.eval_every == 0 and not last_step:
            value, _ = perplexity(model, validation_tokens, args.context, args.batch_size)
            append_metrics(metrics_path, {"step": step, "validation_perplexity": value, "elapsed_seconds": elapsed})
            logger.info("step %d validation perplexity %.2f", step, value)
        if time.monotonic() - last_checkpoint >= args.checkpoint_minutes * 60 or last_step:
            save_checkpoint(checkpoint_path, model=model, optimizer=optimizer, scheduler=scheduler, step=step, data_generator=data_generator, elapsed=elapsed)
            last_checkpoint = time.monotonic()

    final = {"step": step}
    for split in ("validation", "heldout"):
        if (args.corpus / f"{split}.txt").is_file():
            value, count = perplexity(model, packed_tokens(args.corpus, split, tokenizer, args.output), args.context, args.batch_size)
            final[f"{split}_perplexity"], final[f"{split}_tokens"] = value, count
            logger.info("final %s perplexity %.2f over %d predicted tokens", split, value, count)
    append_metrics(metrics_path, final)

    model.eval()
    folder = args.save_to or args.output / "evaluator"
    with atomic_directory(folder, overwrite=True) as temporary:
        model.to(parse_dtype(args.save_dtype)).save_pretrained(str(temporary))
        save_tokenizer(tokenizer, temporary)
        (temporary / "evaluation.json").write_text(json.dumps(final, indent=2) + "\n")
    logger.info("evaluator written to %s", folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    train(parse_args(argv))


if __name__ == "__main__":
    main()
