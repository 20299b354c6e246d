"""Budget sweep on the tiny-pydocs models: the published comparison table in miniature.

Samples each variant at each budget (transformer-block forward passes per trajectory) and scores
the samples with the bundled GPT-2 evaluator (generative perplexity) and by unigram entropy:

- source MDLM (12 blocks, ``budget / 12`` steps),
- FP-MGM converted with the mapping of arXiv 2605.31215 (pre 0 | fixed point 5 | post 11), no adaptation, no reuse,
- adapted with the teacher KL, no reuse,
- adapted, full reuse (gamma = 1 everywhere),
- CoFRe: adapted + consistency post-training + three-state reuse.

Writes ``benchmarks/results/tiny-pydocs-sweep.{json,md,png}``.

    python benchmarks/sweep_tiny_pydocs.py --runs /work/runs/tiny-pydocs --budgets 24,48,96 --num-samples 32
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import mgm2fp
from mgm2fp.evaluation.budgets import evaluate_budgets, parse_budgets
from mgm2fp.evaluation.text import Evaluator

RESULTS = Path(__file__).resolve().parent / "results"


def variants(runs: Path, examples: Path, num_iterations: int | None) -> list[dict]:
    """Return the compared models: label, folder, reuse mode and fixed-point depth."""
    source = examples / "mdlm" if (examples / "mdlm").is_dir() else runs / "mdlm"
    cofre = examples / "cofre" if (examples / "cofre").is_dir() else runs / "cofre"
    return [
        {"label": "MDLM (source)", "path": source, "reuse": "none", "num_iterations": None},
        {"label": "FP-MGM, no adaptation", "path": runs / "converted", "reuse": "none", "num_iterations": num_iterations},
        {"label": "adapted, no reuse", "path": runs / "adapted", "reuse": "none", "num_iterations": num_iterations},
        {"label": "adapted, full reuse", "path": runs / "adapted", "reuse": "full", "num_iterations": num_iterations},
        {"label": "CoFRe (consistency + 3SR)", "path": cofre, "reuse": "3sr", "num_iterations": num_iterations},
    ]


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for variant in report["variants"]:
        budgets = [entry["budget"] for entry in variant["results"]]
        left.plot(budgets, [entry["gen_ppl"] for entry in variant["results"]], marker="o", label=variant["label"])
        right.plot(budgets, [entry["entropy"] for entry in variant["results"]], marker="o", label=variant["label"])
    left.set(xscale="log", yscale="log", xlabel="budget (block forward passes)", ylabel="generative perplexity (lower is better)")
    right.set(xscale="log", xlabel="budget (block forward passes)", ylabel="unigram entropy (nats)")
    for axis in (left, right):
        axis.set_xticks(report["budgets"], [str(budget) for budget in report["budgets"]])
        axis.minorticks_off()
        axis.grid(alpha=0.3)
    left.legend(fontsize=8)
    figure.suptitle(f"tiny-pydocs: {report['num_samples']} samples of {report['seq_len']} tokens per point")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def markdown(report: dict) -> str:
    budgets = report["budgets"]
    lines = [
        f"# tiny-pydocs budget sweep ({report['num_samples']} samples x {report['seq_len']} tokens, seed {report['seed']})",
        "",
        f"Generative perplexity under the bundled GPT-2 evaluator (its perplexity on held-out text: {report['reference_perplexity']:.1f}), unigram entropy in brackets.",
        "",
        "| variant | parameters | " + " | ".join(f"budget {budget}" for budget in budgets) + " |",
        "|---|---|" + "---|" * len(budgets),
    ]
    for variant in report["variants"]:
        cells = [f"{entry['gen_ppl']:.1f} ({entry['entropy']:.2f})" for entry in variant["results"]]
        lines.append(f"| {variant['label']} | {variant['num_parameters']:,} | " + " | ".join(cells) + " |")
    lines += ["", "Steps and iterations per budget:", ""]
    for variant in report["variants"]:
        plans = ", ".join(f"{entry['budget']}: {entry['num_steps']} steps" + (f" x {entry['iterations']}" if entry["iterations"] else "") for entry in variant["results"])
        lines.append(f"- {variant['label']}: {plans}")
    lines += ["", f"Command: `{report['command']}` ({report['seconds']:.0f} s on {report['cpu_count']} CPUs)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("/work/runs/tiny-pydocs"), help="folder with converted/, adapted/ and cofre/")
    parser.add_argument("--examples", type=Path, default=Path(__file__).resolve().parents[1] / "examples" / "tiny-pydocs")
    parser.add_argument("--evaluator", type=Path, default=None, help="default: EXAMPLES/evaluator")
    parser.add_argument("--budgets", default="24,48,96")
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--num-iterations", type=int, default=None, help="fixed-point depth of the converted variants (default: each model's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="tiny-pydocs-sweep")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    budgets = parse_budgets(args.budgets)
    evaluator = Evaluator.load(str(args.evaluator or args.examples / "evaluator"))
    heldout = args.runs / "corpus" / "heldout.txt"
    reference_perplexity = evaluator.perplexity([heldout.read_text()[:20000]]) if heldout.is_file() else float("nan")

    start = time.perf_counter()
    report = {"budgets": budgets, "num_samples": args.num_samples, "seq_len": args.seq_len, "seed": args.seed, "reference_perplexity": reference_perplexity, "variants": []}
    for variant in variants(args.runs, args.examples, args.num_iterations):
        options = {} if variant["num_iterations"] is None else {"num_iterations": variant["num_iterations"]}
        model = mgm2fp.load(variant["path"], **options)
        results = evaluate_budgets(model, evaluator, budgets=budgets, num_samples=args.num_samples, seq_len=args.seq_len, reuse=variant["reuse"], seed=args.seed)
        report["variants"].append({**variant, "path": str(variant["path"]), "num_parameters": model.num_parameters(), "results": [result.to_dict() for result in results]})
        print(variant["label"], [(result.budget, round(result.gen_ppl, 1), round(result.entropy, 2)) for result in results], flush=True)
    report["seconds"] = time.perf_counter() - start
    report["cpu_count"] = os.cpu_count()
    report["command"] = "python benchmarks/sweep_tiny_pydocs.py " + " ".join(f"--{key.replace('_', '-')} {value}" for key, value in vars(args).items() if value is not None and key not in ("runs", "examples", "evaluator"))

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    (RESULTS / f"{args.name}.md").write_text(markdown(report))
    plot(report, RESULTS / f"{args.name}.png")
    print(markdown(report))


if __name__ == "__main__":
    main()
