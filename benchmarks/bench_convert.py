"""Benchmark: streamed conversion against a plain safetensors copy of the same checkpoint.

Writes a random checkpoint with the exact kuleshov-group/mdlm-owt layout and sizes (169,627,218
float32 parameters, about 679 MB), then times, in the same run and interleaved,

- the baseline: ``safetensors.torch.load_file`` + ``save_file`` of that file (a plain copy), and
- ``mgm2fp convert CHECKPOINT --share-layers 4-9 --output OUT``,

each as a fresh Python process, recording wall time and peak resident memory (``os.wait4``).
Goal: conversion at most 2x the copy's wall time and no more peak memory than the copy.

    python benchmarks/bench_convert.py [--repeats 3] [--workdir /tmp/mgm2fp-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

MDLM_OWT_CONFIG = {
    "model_type": "mdlm",
    "architectures": ["MDLM"],
    "hidden_dim": 768,
    "cond_dim": 128,
    "n_blocks": 12,
    "n_heads": 12,
    "vocab_size": 50258,
    "model_length": 1024,
    "dropout": 0.1,
    "time_conditioning": False,
    "return_dict": False,
}
RESULTS = Path(__file__).resolve().parent / "results"


def write_random_checkpoint(folder: Path) -> Path:
    """Write config.json and a random model.safetensors in the mdlm-owt layout; return the weights path."""
    from mgm2fp.families.mdlm import MDLMDiT

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(MDLM_OWT_CONFIG, indent=2))
    with torch.device("meta"):
        shapes = {name: tensor.shape for name, tensor in MDLMDiT(MDLM_OWT_CONFIG).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    tensors = {f"backbone.{name}": torch.randn(shape, generator=generator) * 0.02 for name, shape in shapes.items()}
    weights = folder / "model.safetensors"
    save_file(tensors, str(weights))
    return weights


def run_measured(command: list[str]) -> tuple[float, float]:
    """Run ``command``; return (wall seconds, peak RSS in MB) of that process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"command failed: {' '.join(command)}\n{process.stderr.read().decode()}")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mgm2fp-bench-convert"))
    parser.add_argument("--share-layers", default="4-9")
    args = parser.parse_args()

    source = args.workdir / "mdlm-owt-random"
    weights = source / "model.safetensors"
    if not weights.is_file():
        write_random_checkpoint(source)
    file_mb = weights.stat().st_size / 1e6

    copy_script = "import sys; from safetensors.torch import load_file, save_file; save_file(load_file(sys.argv[1]), sys.argv[2])"
    measurements: dict[str, list[tuple[float, float]]] = {"copy": [], "convert": []}
    for repeat in range(args.repeats):
        copy_target = args.workdir / "copy.safetensors"
        convert_target = args.workdir / "converted"
        shutil.rmtree(convert_target, ignore_errors=True)
        measurements["copy"].append(run_measured([sys.executable, "-c", copy_script, str(weights), str(copy_target)]))
        measurements["convert"].append(run_measured([sys.executable, "-m", "mgm2fp", "convert", str(source), "--share-layers", args.share_layers, "--output", str(convert_target)]))
        copy_target.unlink()

    summary = {}
    for name, values in measurements.items():
        summary[name] = {"wall_s": statistics.median(v[0] for v in values), "peak_rss_mb": statistics.median(v[1] for v in values), "runs": values}
    ratios = {
        "wall_time_ratio": summary["convert"]["wall_s"] / summary["copy"]["wall_s"],
        "peak_memory_ratio": summary["convert"]["peak_rss_mb"] / summary["copy"]["peak_rss_mb"],
        "copy_peak_over_file": summary["copy"]["peak_rss_mb"] / file_mb,
        "convert_peak_over_file": summary["convert"]["peak_rss_mb"] / file_mb,
    }
    report = {"file_mb": file_mb, "share_layers": args.share_layers, "repeats": args.repeats, "cpu_count": os.cpu_count(), **summary, **ratios}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "convert.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# Conversion against a plain safetensors copy ({file_mb:.0f} MB mdlm-owt layout, --share-layers {args.share_layers})",
        "",
        "| | wall time (s, median) | peak RSS (MB, median) |",
        "|---|---|---|",
        f"| load_file + save_file | {summary['copy']['wall_s']:.2f} | {summary['copy']['peak_rss_mb']:.0f} |",
        f"| mgm2fp convert | {summary['convert']['wall_s']:.2f} | {summary['convert']['peak_rss_mb']:.0f} |",
        f"| ratio | {ratios['wall_time_ratio']:.2f}x (goal <= 2x) | {ratios['peak_memory_ratio']:.2f}x (goal <= 1x) |",
        "",
        f"Both run as fresh Python processes, {args.repeats} interleaved repeats, {os.cpu_count()} CPUs.",
    ]
    (RESULTS / "convert.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
