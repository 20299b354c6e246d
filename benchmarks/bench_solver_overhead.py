"""Wall time per block forward pass of a fixed-point MGM against its source model, in one run.

The budget of arXiv 2605.31215 counts block forward passes, so the solver loop must cost almost
nothing beyond its blocks for the budget to predict wall time. This script builds a randomly
initialised MDLM DiT (mdlm-owt sizes by default) and fixed-point versions of it with the same
number of block passes per step (1 pre block, N = 10 iterations of one shared block, 1 post block,
against the source's 12 blocks), then times one denoising step of each, interleaved, and reports:

- ``per pass``: wall time of a whole step divided by its block forward passes. Times are the
  minimum over the repetitions, the estimator least disturbed by other jobs on the machine for
  deterministic CPU-bound work (the median is in the JSON);
- ``step ratio``: that time over the source model's (embedding and output layer included);
- ``block ratio``: the same after subtracting the time of the embedding and output layer, which
  both models share. It isolates the blocks, the injection and the solver loop.

Variants:

- injection ``none``, ``add`` and ``fpdm``. The ``fpdm`` injection adds two matrix products per
  iteration, which belong to the model rather than to the loop;
- residual tracking;
- a tolerance of 0, which checks the residual at every iteration but never stops;
- Anderson acceleration;
- a 3SR warm start.

With ``--sample-steps`` it also times whole ``mgm2fp.sample`` runs of the source and of the 3SR
model at the same budget.

Usage (prints a table, writes JSON under benchmarks/results/):

    nice -n 10 python benchmarks/bench_solver_overhead.py --threads 1 --seq-len 128 --batch 1
    python benchmarks/bench_solver_overhead.py --device cuda --seq-len 1024 --batch 16
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark the checkout this script is in

import mgm2fp  # noqa: E402
from mgm2fp.families.mdlm import MDLMDiT  # noqa: E402
from mgm2fp.sampling import three_state_gamma  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=768, help="hidden size (mdlm-owt: 768)")
    parser.add_argument("--heads", type=int, default=12, help="attention heads (mdlm-owt: 12)")
    parser.add_argument("--blocks", type=int, default=12, help="blocks of the source model (mdlm-owt: 12)")
    parser.add_argument("--vocab", type=int, default=50258, help="vocabulary size with the mask token (mdlm-owt: 50258)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=2, help="sequences per batch")
    parser.add_argument("--repeats", type=int, default=15, help="timed repetitions per variant (the minimum is reported)")
    parser.add_argument("--sample-steps", type=int, default=4, help="denoising steps of the whole-sampling comparison (0 skips it)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: torch's choice]")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    parser.add_argument("--output", type=Path, default=None, help="JSON file to write [default: benchmarks/results/solver_overhead-<device>-<time>.json]")
    return parser.parse_args()


def build_source(arguments: argparse.Namespace) -> MDLMDiT:
    config = {
        "model_type": "mdlm",
        "hidden_dim": arguments.hidden,
        "cond_dim": 128,
        "n_blocks": arguments.blocks,
        "n_heads": arguments.heads,
        "vocab_size": arguments.vocab,
        "model_length": arguments.seq_len,
        "time_conditioning": False,
    }
    torch.manual_seed(0)
    model = MDLMDiT(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02)  # the release zero-initialises adaLN; random keeps every product non-trivial
    return model.to(device=arguments.device, dtype=getattr(torch, arguments.dtype)).eval()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_variants(variants: dict[str, Callable[[], Any]], *, repeats: int, device: str) -> dict[str, list[float]]:
    """Run every variant once to warm up, then ``repeats`` rounds of all variants in turn."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        for run in variants.values():
            run()
        for _ in range(repeats):
            for name, run in variants.items():
                synchronize(device)
                started = time.perf_counter()
                run()
                synchronize(device)
                seconds[name].append(time.perf_counter() - started)
    return seconds


def step_variants(source: MDLMDiT, arguments: argparse.Namespace) -> tuple[dict[str, Callable[[], Any]], dict[str, int]]:
    """Return the timed callables and the block forward passes of each."""
    tokens = torch.randint(0, arguments.vocab - 1, (arguments.batch, arguments.seq_len), device=arguments.device)
    tokens[:, ::2] = arguments.vocab - 1  # half masked, as in the middle of sampling
    iterations = arguments.blocks - 2
    models = {name: mgm2fp.convert(source, pre_layers="0", fixed_point_layers=f"1-{arguments.blocks - 2}", post_layers=str(arguments.blocks - 1), injection=name).eval() for name in ("none", "add", "fpdm")}
    fpdm = models["fpdm"]
    with torch.no_grad():
        previous = fpdm.forward_with_state(tokens).solution
    gamma = three_state_gamma(tokens, tokens, arguments.vocab - 1)

    def embed_and_head() -> torch.Tensor:
        hidden, context = source.embed(tokens)
        return source.head(hidden, context)

    variants: dict[str, Callable[[], Any]] = {
        "source": lambda: source(tokens),
        "embedding + output layer": embed_and_head,
        "fp, injection none": lambda: models["none"].forward_with_state(tokens, num_iterations=iterations),
        "fp, injection add": lambda: models["add"].forward_with_state(tokens, num_iterations=iterations),
        "fp, injection fpdm": lambda: fpdm.forward_with_state(tokens, num_iterations=iterations),
        "fp, fpdm, residuals tracked": lambda: fpdm.forward_with_state(tokens, num_iterations=iterations, track_residuals=True),
        "fp, fpdm, tolerance 0": lambda: fpdm.forward_with_state(tokens, num_iterations=iterations, tolerance=0.0),
        "fp, fpdm, anderson": lambda: fpdm.forward_with_state(tokens, num_iterations=iterations, solver="anderson"),
        "fp, fpdm, 3sr warm start": lambda: fpdm.forward_with_state(tokens, num_iterations=iterations, initial_state=previous, warm_start_weight=gamma),
    }
    passes = {name: arguments.blocks for name in variants}
    passes["embedding + output layer"] = 0
    return variants, passes


def sampling_comparison(source: MDLMDiT, arguments: argparse.Namespace) -> list[dict[str, Any]]:
    """Time whole sampling runs of the source and of a 3SR fixed-point model at the same budget."""
    fixed_point = mgm2fp.convert(source, pre_layers="0", fixed_point_layers=f"1-{arguments.blocks - 2}", post_layers=str(arguments.blocks - 1), injection="fpdm").eval()
    budget = arguments.sample_steps * arguments.blocks
    rows = []
    for name, model, reuse in (("sample, source", source, "none"), ("sample, fp fpdm 3sr", fixed_point, "3sr")):
        options = {"num_samples": arguments.batch, "seq_len": arguments.seq_len, "budget": budget, "reuse": reuse, "decode": False, "cache": False}
        mgm2fp.sample(model, **{**options, "budget": arguments.blocks})  # warm-up: one step
        runs = [mgm2fp.sample(model, **options, seed=seed) for seed in range(max(1, arguments.repeats // 3))]
        seconds = [run.seconds for run in runs]
        rows.append({"variant": name, "seconds": min(seconds), "seconds_median": statistics.median(seconds), "block_forward_passes": runs[0].block_forward_passes})
    return rows


def cpu_name() -> str:
    """Return the CPU model from /proc/cpuinfo (Linux), else what the platform module reports."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    arguments = parse_arguments()
    if arguments.threads is not None:
        torch.set_num_threads(arguments.threads)
    source = build_source(arguments)
    variants, passes = step_variants(source, arguments)
    seconds = time_variants(variants, repeats=arguments.repeats, device=arguments.device)

    fastest = {name: min(values) for name, values in seconds.items()}
    shared = fastest["embedding + output layer"]
    rows = []
    for name, value in fastest.items():
        row: dict[str, Any] = {"variant": name, "seconds": value, "seconds_median": statistics.median(seconds[name]), "block_forward_passes": passes[name], "seconds_all": seconds[name]}
        if passes[name]:
            row["seconds_per_pass"] = value / passes[name]
            row["step_ratio"] = value / fastest["source"]
            row["block_ratio"] = (value - shared) / (fastest["source"] - shared)
        rows.append(row)
    if arguments.sample_steps > 0:
        sample_rows = sampling_comparison(source, arguments)
        for row in sample_rows:
            row["seconds_per_pass"] = row["seconds"] / row["block_forward_passes"]
            row["step_ratio"] = row["seconds_per_pass"] / sample_rows[0]["seconds_per_pass"]
        rows.extend(sample_rows)

    print(f"{'variant':32} {'min s':>9} {'passes':>7} {'per pass':>10} {'step ratio':>11} {'block ratio':>12}")
    for row in rows:
        per_pass = f"{row['seconds_per_pass'] * 1e3:8.2f}ms" if "seconds_per_pass" in row else ""
        step_ratio = f"{row['step_ratio']:.3f}" if "step_ratio" in row else ""
        block_ratio = f"{row['block_ratio']:.3f}" if "block_ratio" in row else ""
        print(f"{row['variant']:32} {row['seconds']:9.3f} {row['block_forward_passes']:7d} {per_pass:>10} {step_ratio:>11} {block_ratio:>12}")

    record = {
        "benchmark": "solver_overhead",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "arguments": {key: str(value) if isinstance(value, Path) else value for key, value in vars(arguments).items()},
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(), "python": platform.python_version(), "device_name": torch.cuda.get_device_name() if arguments.device.startswith("cuda") else cpu_name()},
        "rows": rows,
    }
    output = arguments.output or RESULTS / f"solver_overhead-{arguments.device}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
