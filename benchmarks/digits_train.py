"""Train the digits setting on CPU: a Halton-MaskGIT-shaped source model, its fixed-point version, a feature classifier.

Three stages, each writing under ``/work/runs/digits`` (``--runs`` changes it):

- ``source``: a Halton-MaskGIT adapter (hidden 128, 8 blocks, 4 heads, random init) trained with
  the MaskGIT masking loss. A mask ratio ``r = cos(pi / 2 * u)``, ``u ~ U(0, 1)``, masks
  ``ceil(r * 64)`` random cells. The loss is the cross-entropy on masked cells, with the mask
  token excluded from the softmax. Labels are dropped with probability 0.1 for classifier-free
  guidance. Saved as a release-layout ``.pth`` that ``mgm2fp.load`` reads.
- ``adapt``: ``mgm2fp.convert`` with blocks 0-1 before, 2-5 shared (initialised from block 2) and
  6-7 after, then a short adaptation. ``mgm2fp.finetune`` is MDLM-specific in its loss, so this
  script has its own loop built from the pure objectives of ``mgm2fp.training.objectives``. The
  loss is the masked cross-entropy on nested student masks, plus ``tau^2`` KL to the frozen
  source fed the cleaner input (tau 1.5), plus the cross-step consistency loss. Iterations are
  drawn as in S-JFB (``N_ng ~ U{0..4}``, ``N_g ~ U{3..6}``, arXiv 2605.31215). The weights of the KL (0.5)
  and consistency (0.1) terms ramp up linearly over the first steps; those values are our choice
  for a run of a few hundred steps. Saved with ``mgm2fp.save_pretrained``.
- ``classifier``: a small MLP on the 64 grey values, whose 64-d penultimate layer gives the
  features of the Frechet distance in ``bench_digits.py``.

The recorded run (``benchmarks/results/digits.md``) used, in order:

    nice -n 10 python benchmarks/digits_train.py source --max-steps 900 --time-budget-minutes 11 --dropout 0.1
    nice -n 10 python benchmarks/digits_train.py source --resume --max-steps 320 --time-budget-minutes 6.5
    nice -n 10 python benchmarks/digits_train.py classifier
    nice -n 10 python benchmarks/digits_train.py adapt --max-steps 300 --time-budget-minutes 4.5

The first source run stopped at its time limit; the second continues it with a new learning-rate
schedule. ``training.json`` beside each model records the steps, losses and times.

Runs with one torch thread (the development machine has 2 shared cores).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mgm2fp  # noqa: E402
from mgm2fp.families.halton_maskgit import HaltonMaskGIT  # noqa: E402
from mgm2fp.training.objectives import consistency_loss, distillation_kl, linear_warmup, masked_log_softmax, nested_masks, sample_jfb_iterations  # noqa: E402

from digits_data import MASK_ID, NUM_CLASSES, RUNS, SOURCE_CONFIG, SOURCE_FILE, load_split, save_release  # noqa: E402

LABEL_DROP = 0.1
# Fixed-point layout: blocks 0-1 before, 2-5 replaced by one shared block (from block 2), 6-7 after.
LAYERS = {"pre_layers": "0-1", "fixed_point_layers": "2-5", "post_layers": "6-7"}


class DigitClassifier(nn.Module):
    """MLP on grey values in [0, 1] ``[N, 64]``; :meth:`features` is the 64-d penultimate layer."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 64), nn.ReLU())
        self.output = nn.Linear(64, NUM_CLASSES)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.body(pixels)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(pixels))


# Masking -----------------------------------------------------------------------------------------


def mask_ratios(batch: int, generator: torch.Generator) -> torch.Tensor:
    """MaskGIT's training mask ratio ``cos(pi / 2 * u)``, ``u ~ U(0, 1)``: ``[B]``."""
    return torch.cos(math.pi / 2 * torch.rand(batch, generator=generator))


def mask_exact(codes: torch.Tensor, ratios: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mask ``ceil(ratio * 64)`` random cells of each grid (at least one): ``[B, 64]``."""
    counts = (ratios * codes.shape[1]).ceil().clamp(min=1)[:, None]  # [B, 1]
    ranks = torch.rand(codes.shape, generator=generator).argsort(dim=1).argsort(dim=1)  # [B, 64], a random permutation per row
    return torch.where(ranks < counts, torch.full_like(codes, MASK_ID), codes)


def masked_cross_entropy(logits: torch.Tensor, codes: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over masked cells, the mask token excluded from the softmax."""
    log_probs = masked_log_softmax(logits, MASK_ID)  # [B, 64, V]
    masked = inputs == MASK_ID
    return F.nll_loss(log_probs[masked], codes[masked])


@torch.no_grad()
def validation_loss(model: nn.Module, codes: torch.Tensor, labels: torch.Tensor) -> float:
    """Masked cross-entropy on held-out grids at ratios 0.25, 0.5, 0.75 and 1 (fixed masks), averaged."""
    generator = torch.Generator().manual_seed(1234)
    model.eval()
    losses = []
    for ratio in (0.25, 0.5, 0.75, 1.0):
        inputs = mask_exact(codes, torch.full((codes.shape[0],), ratio), generator)
        losses.append(float(masked_cross_entropy(model(inputs, labels), codes, inputs)))
    model.train()
    return sum(losses) / len(losses)


def learning_rate(step: int, *, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def initialise_embeddings(model: HaltonMaskGIT) -> None:
    """Draw the embedding tables from N(0, 0.02): the head is tied to ``tok_emb``, and unit-variance rows give logits of scale 10."""
    with torch.no_grad():
        for table in (model.tok_emb.weight, model.pos_emb.weight, model.cls_emb.weight, model.reg_tokens.weight):
            table.normal_(0.0, 0.02)


def drop_labels(batch: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(batch, generator=generator) < LABEL_DROP


# Stages ----------------------------------------------------------------------------------------


def train_source(args: argparse.Namespace) -> dict[str, Any]:
    split = load_split()
    torch.manual_seed(args.seed)
    previous: dict[str, Any] = {"steps": 0, "seconds": 0.0, "log": []}
    if args.resume:
        # Continue the saved model with a new warm-up and cosine decay (AdamW state starts afresh).
        previous = json.loads((args.runs / "source" / "training.json").read_text())
        model = mgm2fp.load(args.runs / "source" / SOURCE_FILE).train()
        model.config["dropout"] = args.dropout
    else:
        model = HaltonMaskGIT({**SOURCE_CONFIG, "dropout": args.dropout}).train()
        initialise_embeddings(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    generator = torch.Generator().manual_seed(args.seed)
    log: list[dict[str, float]] = []
    started = time.perf_counter()
    step = 0
    for step in range(args.max_steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, peak=args.lr, warmup=50, total=args.max_steps)
        index = torch.randint(0, split.train_codes.shape[0], (args.batch_size,), generator=generator)
        codes, labels = split.train_codes[index], split.train_labels[index]
        inputs = mask_exact(codes, mask_ratios(args.batch_size, generator), generator)
        loss = masked_cross_entropy(model(inputs, labels, drop_labels(args.batch_size, generator)), codes, inputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % args.log_every == 0 or step == args.max_steps - 1:
            entry = {"step": previous["steps"] + step, "loss": float(loss.detach()), "validation_loss": validation_loss(model, split.test_codes, split.test_labels), "seconds": previous["seconds"] + time.perf_counter() - started}
            log.append(entry)
            print(json.dumps(entry), flush=True)
        if time.perf_counter() - started > args.time_budget_minutes * 60:
            print(f"time budget reached after {step + 1} steps", flush=True)
            break
    model.eval()
    total_steps = previous["steps"] + step + 1
    path = save_release(model, args.runs / "source", steps=total_steps)
    summary = {
        "steps": total_steps,
        "seconds": previous["seconds"] + time.perf_counter() - started,
        "final_validation_loss": validation_loss(model, split.test_codes, split.test_labels),
        "batch_size": args.batch_size,
        "runs": [*previous.get("runs", [{"steps": previous["steps"], "lr": previous.get("lr"), "dropout": previous.get("dropout", 0.1)}] if previous["steps"] else []), {"steps": step + 1, "lr": args.lr, "dropout": args.dropout}],
        "log": previous["log"] + log,
        "weights": str(path),
    }
    (args.runs / "source" / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def adaptation_loss(student: mgm2fp.FixedPointMGM, teacher: nn.Module, codes: torch.Tensor, labels: torch.Tensor, *, step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """Masked cross-entropy + weighted teacher KL + weighted consistency loss of one batch."""
    batch, cells = codes.shape
    x_student, x_cleaner, _ = nested_masks(codes, mask_ratios(batch, generator), mask_token_id=MASK_ID, generator=generator)
    drop = drop_labels(batch, generator)
    no_grad_iterations, grad_iterations = sample_jfb_iterations((0, 4), (3, 6), generator=generator)
    output = student.forward_with_state(x_student, labels, drop, num_iterations=no_grad_iterations + grad_iterations, no_grad_iterations=no_grad_iterations)
    with torch.no_grad():
        teacher_logits = teacher(x_cleaner, labels, drop)
        cleaner = student.forward_with_state(x_cleaner, labels, drop)
    terms = {
        "cross_entropy": masked_cross_entropy(output.logits, codes, x_student),
        "distillation": distillation_kl(output.logits, teacher_logits, x_student, x_cleaner, mask_token_id=MASK_ID, temperature=1.5),
        # The hidden states end with the register token; the loss covers the 64 image cells.
        "consistency": consistency_loss(output.hidden[:, :cells], cleaner.hidden[:, :cells], x_student, mask_token_id=MASK_ID),
    }
    weights = {"distillation": linear_warmup(step, final_value=0.5, warmup_steps=50), "consistency": linear_warmup(step, final_value=0.1, warmup_steps=100)}
    loss = terms["cross_entropy"] + weights["distillation"] * terms["distillation"] + weights["consistency"] * terms["consistency"]
    return loss, {name: float(value.detach()) for name, value in terms.items()}


def adapt(args: argparse.Namespace) -> dict[str, Any]:
    split = load_split()
    teacher = mgm2fp.load(args.runs / "source" / SOURCE_FILE).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    student = mgm2fp.convert(copy.deepcopy(teacher), **LAYERS)
    for parameter in student.parameters():
        parameter.requires_grad_(True)
    converted_loss = validation_loss(student, split.test_codes, split.test_labels)
    mgm2fp.save_pretrained(student, args.runs / "fp-converted", overwrite=True)
    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed)
    log: list[dict[str, float]] = []
    started = time.perf_counter()
    step = 0
    for step in range(args.max_steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, peak=args.lr, warmup=20, total=args.max_steps)
        index = torch.randint(0, split.train_codes.shape[0], (args.batch_size,), generator=generator)
        loss, terms = adaptation_loss(student, teacher, split.train_codes[index], split.train_labels[index], step=step, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        if step % args.log_every == 0 or step == args.max_steps - 1:
            entry = {"step": step, "loss": float(loss.detach()), **terms, "validation_loss": validation_loss(student, split.test_codes, split.test_labels), "seconds": time.perf_counter() - started}
            log.append(entry)
            print(json.dumps(entry), flush=True)
        if time.perf_counter() - started > args.time_budget_minutes * 60:
            print(f"time budget reached after {step + 1} steps", flush=True)
            break
    student.eval()
    mgm2fp.save_pretrained(student, args.runs / "fp-adapted", overwrite=True)
    summary = {
        "steps": step + 1,
        "seconds": time.perf_counter() - started,
        "source_validation_loss": validation_loss(teacher, split.test_codes, split.test_labels),
        "converted_validation_loss": converted_loss,
        "adapted_validation_loss": validation_loss(student, split.test_codes, split.test_labels),
        "source_parameters": teacher.num_parameters(),
        "fixed_point_parameters": student.num_parameters(),
        "batch_size": args.batch_size,
        "lr": args.lr,
        "log": log,
    }
    (args.runs / "fp-adapted" / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def train_classifier(args: argparse.Namespace) -> dict[str, Any]:
    split = load_split()
    torch.manual_seed(args.seed)
    classifier = DigitClassifier()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=3e-3, weight_decay=1e-3)
    pixels = split.train_codes.float() / 15
    for _ in range(400):  # full-batch epochs; a few seconds on one core
        loss = F.cross_entropy(classifier(pixels), split.train_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    classifier.eval()
    with torch.no_grad():
        accuracy = float((classifier(split.test_codes.float() / 15).argmax(1) == split.test_labels).float().mean())
    folder = args.runs / "classifier"
    folder.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file(classifier.state_dict(), str(folder / "classifier.safetensors"))
    summary = {"test_accuracy": accuracy, "epochs": 400}
    (folder / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary), flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["source", "adapt", "classifier"])
    parser.add_argument("--runs", type=Path, default=RUNS, help="Folder of weights and logs (kept out of git).")
    parser.add_argument("--max-steps", type=int, default=900)
    parser.add_argument("--time-budget-minutes", type=float, default=12.0, help="Stop training after this many minutes.")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=None, help="Peak learning rate (default: 1e-3 for source, 3e-4 for adapt).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dropout", type=float, default=0.0, help="Dropout of the source model during training.")
    parser.add_argument("--log-every", type=int, default=100, help="Steps between validation losses.")
    parser.add_argument("--resume", action="store_true", help="source: continue training the saved source model.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.lr is None:
        args.lr = 1e-3 if args.stage == "source" else 3e-4
    stage = {"source": train_source, "adapt": adapt, "classifier": train_classifier}[args.stage]
    summary = stage(args)
    print(json.dumps({key: value for key, value in summary.items() if key != "log"}, indent=2))


if __name__ == "__main__":
    main()
