"""Compare a digits source model with its fixed-point versions at low sampling budgets, on CPU.

Reads the models that ``digits_train.py`` wrote under ``/work/runs/digits`` and samples each
configuration with ``mgm2fp.sample`` (Halton order, arccos schedule, the Halton-MaskGIT
defaults), 50 samples per class, at every budget, unguided and with classifier-free guidance.
It reports:

- the Frechet distance (FD) between the 64-d penultimate features of the digits classifier on
  the samples and on the training images, computed with ``mgm2fp.evaluation.images``;
- the classifier's accuracy on the samples against the classes they were drawn for;
- the block forward passes spent, the steps and the fixed-point iterations.

A reference row gives the FD of the held-out test images (360) against the training images,
the value a perfect sampler would reach with that many images. FD from a few hundred images is
biased upwards, so compare rows with each other, not with FID values of other work.

    nice -n 10 python benchmarks/bench_digits.py                   # writes benchmarks/results/digits.{json,md,png}
    nice -n 10 python benchmarks/bench_digits.py --num-samples 100 --budgets 16 32   # a quick check
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import mgm2fp  # noqa: E402
from mgm2fp.evaluation.images import frechet_inception_distance  # noqa: E402

from digits_data import NUM_CLASSES, RUNS, SOURCE_FILE, codes_to_images, load_split  # noqa: E402
from digits_train import DigitClassifier  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BUDGETS = (8, 16, 24, 32, 48)
EXAMPLE_BUDGET = 24  # the budget of the example samples in the figure
SPREAD_BUDGET = 16  # the budget at which the source is also sampled with other seeds, to size the noise of FD
CFG_WEIGHT = 2.0
# name, model folder or file under the runs folder, sampling options.
METHODS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("source (8 blocks)", f"source/{SOURCE_FILE}", {}),
    ("FP converted, not adapted", "fp-converted", {"reuse": "none"}),
    ("FP adapted, no reuse", "fp-adapted", {"reuse": "none"}),
    ("FP adapted, 3SR", "fp-adapted", {"reuse": "3sr"}),
    # As many steps as the budget pays at one iteration each; leftover passes go to extra iterations.
    ("FP adapted, 3SR, more steps", "fp-adapted", {"reuse": "3sr", "most_steps": True}),
)


class ClassifierFeatures(nn.Module):
    """Penultimate features of the digits classifier for uint8 images ``[N, 3, 8, 8]`` (grey in every channel)."""

    def __init__(self, classifier: DigitClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images[:, 0].float().flatten(1) / 255.0  # [N, 64] in [0, 1]
        return self.classifier.features(pixels).double()


def as_rgb(codes: torch.Tensor) -> torch.Tensor:
    return codes_to_images(codes).expand(-1, 3, -1, -1)  # [N, 3, 8, 8]


def load_classifier(runs: Path) -> DigitClassifier:
    from safetensors.torch import load_file

    classifier = DigitClassifier()
    classifier.load_state_dict(load_file(str(runs / "classifier" / "classifier.safetensors")))
    return classifier.eval()


def accuracy(classifier: DigitClassifier, codes: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((classifier(codes.float() / 15).argmax(1) == labels).float().mean())


def evaluate_method(name: str, model: Any, options: dict[str, Any], *, budgets: tuple[int, ...], labels: torch.Tensor, reference: torch.Tensor, classifier: DigitClassifier, features: nn.Module, seed: int, example_budget: int) -> list[dict[str, Any]]:
    rows = []
    options = dict(options)
    most_steps = options.pop("most_steps", False)
    for budget in budgets:
        if most_steps:
            options["steps"] = budget // model.cost_per_step(1)
        for cfg_weight in (0.0, CFG_WEIGHT):
            started = time.perf_counter()
            result = mgm2fp.sample(model, len(labels), budget=budget, labels=labels, cfg_weight=cfg_weight, seed=seed, **options)
            seconds = time.perf_counter() - started
            row = {
                "method": name,
                "budget": budget,
                "cfg_weight": cfg_weight,
                "frechet_distance": frechet_inception_distance(as_rgb(reference), as_rgb(result.tokens), feature=features),
                "class_accuracy": accuracy(classifier, result.tokens, labels),
                "block_forward_passes": result.block_forward_passes,
                "steps": result.num_steps,
                "iterations": result.iterations,
                "seconds": seconds,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            if cfg_weight > 0 and budget == example_budget:
                row["example_tokens"] = result.tokens[:NUM_CLASSES].tolist()  # one sample per class, for the figure
    return rows


def seed_spread(model: Any, *, budget: int, labels: torch.Tensor, reference: torch.Tensor, features: nn.Module, seeds: tuple[int, ...]) -> dict[str, Any]:
    """FD of unguided samples of ``model`` at ``budget`` for several seeds: how much FD moves by chance alone."""
    distances = [frechet_inception_distance(as_rgb(reference), as_rgb(mgm2fp.sample(model, len(labels), budget=budget, labels=labels, seed=seed).tokens), feature=features) for seed in seeds]
    return {"budget": budget, "seeds": list(seeds), "frechet_distances": distances}


def write_markdown(path: Path, payload: dict[str, Any]) -> None:
    rows, budgets = payload["rows"], payload["budgets"]
    lines = [
        "# Digits: FP-MaskGIT against its source at low budgets (CPU)",
        "",
        f"Command: `{payload['command']}`. {payload['num_samples']} samples per configuration ({payload['num_samples'] // NUM_CLASSES} per class), "
        f"Halton order, arccos schedule, seed {payload['seed']}. Guided rows use classifier-free guidance with weight {CFG_WEIGHT} (constant). "
        "FD: Frechet distance between the classifier's 64-d penultimate features of the samples and of the training images (lower is better). "
        "Accuracy: the classifier's accuracy on the samples against the classes they were drawn for.",
        "",
        f"Reference: the held-out test images score FD {payload['reference']['test_frechet_distance']:.2f} against the training images, "
        f"and the classifier's test accuracy is {payload['reference']['classifier_test_accuracy']:.3f}.",
        "",
    ]
    source, adapted = payload["training"]["source"], payload["training"]["fp-adapted"]
    lines += [
        f"Models ({payload['machine']}): the source trained {source['steps']} steps of batch {source['batch_size']} in {source['seconds'] / 60:.1f} minutes; "
        f"the fixed-point model ({adapted['fixed_point_parameters']:,} parameters against {adapted['source_parameters']:,}) adapted {adapted['steps']} steps in {adapted['seconds'] / 60:.1f} minutes. "
        f"Held-out masked cross-entropy: source {adapted['source_validation_loss']:.3f}, converted {adapted['converted_validation_loss']:.3f}, adapted {adapted['adapted_validation_loss']:.3f}.",
        "",
    ]
    spread = payload.get("spread")
    if spread:
        distances = spread["frechet_distances"]
        lines += [
            f"Noise: the unguided source at budget {spread['budget']} scores FD {min(distances):.2f} to {max(distances):.2f} over seeds "
            f"{', '.join(map(str, spread['seeds']))}, so differences of that size are chance.",
            "",
        ]
    for cfg_weight, title in ((0.0, "Unguided (class-conditional, w = 0)"), (CFG_WEIGHT, f"Guided (w = {CFG_WEIGHT})")):
        lines += [f"## {title}", "", "| method | " + " | ".join(f"budget {budget}: FD / accuracy / steps" for budget in budgets) + " |", "|---|" + "---|" * len(budgets)]
        for method in dict.fromkeys(row["method"] for row in rows):
            cells = []
            for budget in budgets:
                row = next(row for row in rows if row["method"] == method and row["budget"] == budget and row["cfg_weight"] == cfg_weight)
                cells.append(f"{row['frechet_distance']:.2f} / {row['class_accuracy']:.3f} / {row['steps']}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    path.write_text("\n".join(lines))


def plot(path: Path, payload: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["rows"]
    methods = list(dict.fromkeys(row["method"] for row in rows))
    figure = plt.figure(figsize=(13, 7.5))
    grid = figure.add_gridspec(2, 3, height_ratios=(1.0, 1.1))
    panels = [(0.0, "frechet_distance", "FD, unguided"), (CFG_WEIGHT, "frechet_distance", f"FD, guided (w = {CFG_WEIGHT})"), (CFG_WEIGHT, "class_accuracy", f"accuracy, guided (w = {CFG_WEIGHT})")]
    for column, (cfg_weight, key, title) in enumerate(panels):
        axis = figure.add_subplot(grid[0, column])
        for method in methods:
            points = sorted((row["budget"], row[key]) for row in rows if row["method"] == method and row["cfg_weight"] == cfg_weight)
            axis.plot([budget for budget, _ in points], [value for _, value in points], marker="o", label=method)
        if key == "frechet_distance":
            axis.axhline(payload["reference"]["test_frechet_distance"], color="grey", linestyle="--", label="test images")
        axis.set_xlabel("budget (block forward passes)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    figure.axes[0].legend(fontsize=7)

    examples = [row for row in rows if "example_tokens" in row]
    axis = figure.add_subplot(grid[1, :])
    tiles = []
    for row in examples:
        images = codes_to_images(torch.tensor(row["example_tokens"]))[:, 0]  # [10, 8, 8]
        tiles.append(torch.cat([torch.nn.functional.pad(image, (1, 1, 1, 1), value=0.0) for image in images], dim=1))
    axis.imshow(torch.cat(tiles, dim=0).numpy(), cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    axis.set_yticks([10 * index + 5 for index in range(len(examples))], [row["method"] for row in examples], fontsize=8)
    axis.set_xticks([10 * index + 5 for index in range(NUM_CLASSES)], [str(index) for index in range(NUM_CLASSES)])
    axis.set_title(f"guided samples at budget {payload['example_budget']}, one per class")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=RUNS, help="Folder written by digits_train.py.")
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--num-samples", type=int, default=500, help="Samples per configuration, spread evenly over the classes.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-only", action="store_true", help="Rewrite the .md and .png from the existing .json without sampling.")
    parser.add_argument("--example-budget", type=int, default=EXAMPLE_BUDGET, help="Budget of the example samples in the figure (one of --budgets).")
    parser.add_argument("--output", type=Path, default=RESULTS / "digits", help="Path stem of the .json, .md and .png results.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.report_only:
        payload = json.loads(args.output.with_suffix(".json").read_text())
        write_markdown(args.output.with_suffix(".md"), payload)
        plot(args.output.with_suffix(".png"), payload)
        return

    split = load_split()
    classifier = load_classifier(args.runs)
    features = ClassifierFeatures(classifier)
    labels = torch.arange(args.num_samples) % NUM_CLASSES
    reference = {
        "test_frechet_distance": frechet_inception_distance(as_rgb(split.train_codes), as_rgb(split.test_codes), feature=features),
        "classifier_test_accuracy": accuracy(classifier, split.test_codes, split.test_labels),
        "test_images": int(split.test_codes.shape[0]),
        "training_images": int(split.train_codes.shape[0]),
    }
    print(json.dumps(reference), flush=True)

    example_budget = args.example_budget if args.example_budget in args.budgets else args.budgets[0]
    rows = []
    for name, location, options in METHODS:
        model = mgm2fp.load(args.runs / location)
        rows += evaluate_method(name, model, options, budgets=tuple(args.budgets), labels=labels, reference=split.train_codes, classifier=classifier, features=features, seed=args.seed, example_budget=example_budget)
    source = mgm2fp.load(args.runs / METHODS[0][1])
    spread = seed_spread(source, budget=SPREAD_BUDGET, labels=labels, reference=split.train_codes, features=features, seeds=(args.seed, *range(args.seed + 1, args.seed + 5)))
    print(json.dumps(spread), flush=True)

    training = {stage: json.loads((args.runs / stage / "training.json").read_text()) for stage in ("source", "fp-adapted", "classifier")}
    for summary in training.values():
        summary.pop("log", None)
    payload = {
        "command": " ".join(["python benchmarks/bench_digits.py", *sys.argv[1:]]),
        "machine": f"{platform.processor() or platform.machine()}, 1 torch thread, torch {torch.__version__}",
        "budgets": args.budgets,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "example_budget": example_budget,
        "reference": reference,
        "spread": spread,
        "training": training,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    write_markdown(args.output.with_suffix(".md"), payload)
    plot(args.output.with_suffix(".png"), payload)
    print(f"wrote {args.output}.json, .md and .png")


if __name__ == "__main__":
    main()
