"""Compare an automatic (CKA) layer plan with a hand-picked one after the same short adaptation.

Samples each adapted model at low budgets without reuse and scores the samples with the
tiny-pydocs GPT-2 evaluator. Writes ``benchmarks/results/layer-plans.{json,md}``.

    python benchmarks/compare_layer_plans.py --runs /work/runs/tiny-pydocs --budgets 24,48 --num-samples 16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import mgm2fp
from mgm2fp.evaluation.budgets import evaluate_budgets, parse_budgets
from mgm2fp.evaluation.text import Evaluator

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("/work/runs/tiny-pydocs"))
    parser.add_argument("--evaluator", type=Path, default=None, help="default: RUNS/evaluator")
    parser.add_argument("--budgets", default="24,48")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    evaluator = Evaluator.load(str(args.evaluator or args.runs / "evaluator"))
    budgets = parse_budgets(args.budgets)
    rows = []
    for label, folder in (("hand-picked (arXiv 2605.31215 mapping)", args.runs / "adapted"), ("automatic (mgm2fp analyze)", args.runs / "adapted-auto")):
        model = mgm2fp.load(folder)
        results = evaluate_budgets(model, evaluator, budgets=budgets, num_samples=args.num_samples, seq_len=args.seq_len, reuse="none", seed=args.seed)
        metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        validation = [entry["val_perplexity"] for entry in metrics if entry.get("split") == "validation"]
        rows.append({"label": label, "plan": model.plan.describe().replace(" | ", ", "), "num_parameters": model.num_parameters(), "steps": model.metadata.get("finetune", {}).get("steps"), "validation_perplexity": validation[-1] if validation else None, "results": [result.to_dict() for result in results]})

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "layer-plans.json").write_text(json.dumps(rows, indent=2))
    lines = [
        f"# Automatic against hand-picked layer plan (tiny-pydocs, same adaptation, no reuse, {args.num_samples} samples x {args.seq_len} tokens)",
        "",
        "| plan | layers | parameters | adaptation steps | validation perplexity | " + " | ".join(f"Gen PPL (entropy) at {budget}" for budget in budgets) + " |",
        "|---|---|---|---|---|" + "---|" * len(budgets),
    ]
    for row in rows:
        cells = [f"{entry['gen_ppl']:.1f} ({entry['entropy']:.2f})" for entry in row["results"]]
        lines.append(f"| {row['label']} | {row['plan']} | {row['num_parameters']:,} | {row['steps']} | {row['validation_perplexity']:.1f} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `python benchmarks/compare_layer_plans.py --budgets {args.budgets} --num-samples {args.num_samples} --seq-len {args.seq_len} --seed {args.seed}`"]
    (RESULTS / "layer-plans.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
