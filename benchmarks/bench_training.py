"""Step time and memory of training a fixed-point MDLM against training its source MDLM, in one run.

arXiv 2605.31215 reports that training FP-MDLM (pre 1 / fixed point 1 / post 1 blocks, S-JFB with
N_ng ~ U{0..4} and N_g ~ U{3..6}) is faster and lighter than training the 12-block MDLM (about 123 h
at 93.4 GiB/GPU against 139 h at 112.4 GiB/GPU on 8 H200). This script measures both on the same
batch with the training objective of mgm2fp (``TrainingObjective``, AdamW, clipping) and reports
the ratios. Models are built from a config with random weights, so nothing is downloaded.

Memory: on a GPU, the peak of ``torch.cuda.max_memory_allocated`` over the measured steps. The CPU
has no allocator statistics, so there the figure is the sum of the parameter, gradient and AdamW
state bytes and the largest per-step total of tensors saved for backward (recorded with autograd's
saved-tensor hooks). That is the part of training memory in which the two models differ, not the
process's resident size.

    python benchmarks/bench_training.py                      # CPU-sized preset
    python benchmarks/bench_training.py --preset owt --batch-size 32 --seq-len 1024   # GPU, paper sizes

Writes ``benchmarks/results/training-<device>-<preset>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mgm2fp  # noqa: E402
from mgm2fp.families.mdlm import MDLMDiT  # noqa: E402
from mgm2fp.training.objectives import LogLinearSchedule, sample_jfb_iterations  # noqa: E402
from mgm2fp.training.step import TrainingObjective, combine_terms, make_inputs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

PRESETS: dict[str, dict[str, Any]] = {
    # kuleshov-group/mdlm-owt sizes.
    "owt": {"hidden_dim": 768, "cond_dim": 128, "n_blocks": 12, "n_heads": 12, "vocab_size": 50258, "model_length": 1024},
    # Same depth and vocabulary, narrower, so that a 2-core CPU finishes in a few minutes.
    "small": {"hidden_dim": 256, "cond_dim": 64, "n_blocks": 12, "n_heads": 4, "vocab_size": 50258, "model_length": 256},
}


def build_models(preset: str, injection: str) -> tuple[MDLMDiT, mgm2fp.FixedPointMGM]:
    config = {"model_type": "mdlm", "time_conditioning": False, "dropout": 0.1, **PRESETS[preset]}
    torch.manual_seed(0)
    source = MDLMDiT(config)
    last = config["n_blocks"] - 1
    # The mapping of arXiv 2605.31215: block 1 before, block 6 shared, block 12 after (1-indexed).
    fixed_point = mgm2fp.convert(source, pre_layers="0", fixed_point_layers="5", post_layers=str(last), injection=injection)
    return source, fixed_point


class SavedTensorMeter:
    """Total bytes of distinct storages that autograd saves for backward during one step."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of trainable parameters, their gradients and the optimizer state."""
    parameters = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters() if parameter.requires_grad)
    optimizer_state = sum(value.numel() * value.element_size() for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value))
    return 2 * parameters + optimizer_state


class Runner:
    """Training steps of one model on random tokens, timed one at a time so that runs can interleave."""

    def __init__(self, name: str, model: mgm2fp.MaskedGenerativeModel, *, consistency: bool, batch_size: int, seq_len: int, device: torch.device, seed: int) -> None:
        self.name = name
        self.model = model.to(device).train()
        self.consistency = consistency
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.device = device
        self.objective = TrainingObjective(self.model)
        self.optimizer = torch.optim.AdamW([parameter for parameter in self.objective.parameters() if parameter.requires_grad], lr=2e-4)
        self.schedule = LogLinearSchedule()
        self.generator = torch.Generator().manual_seed(seed)
        self.times: list[float] = []
        self.saved: list[int] = []
        self.block_passes: list[int] = []
        self.peak_memory = 0

    def step(self, *, record: bool) -> None:
        """Run one training step; keep its time, saved-tensor bytes and block passes when ``record``."""
        model, device = self.model, self.device
        x0 = torch.randint(0, model.vocab_size - 1, (self.batch_size, self.seq_len), generator=self.generator).to(device)
        is_fixed_point = isinstance(model, mgm2fp.FixedPointMGM)
        no_grad, grad = sample_jfb_iterations((0, 4), (3, 6), generator=self.generator) if is_fixed_point else (0, None)
        meter = SavedTensorMeter()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()

        with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda tensor: tensor):
            inputs = make_inputs(x0, mask_token_id=model.mask_token_id, schedule=self.schedule, antithetic=True, nested=self.consistency, gap=(0.05, 0.30))
            terms = self.objective(inputs, consistency=self.consistency, num_iterations=grad, no_grad_iterations=no_grad)
            loss = combine_terms(terms, distill_weight=0.0, consistency_weight=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.objective.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if not record:
            return
        self.times.append(elapsed)
        self.saved.append(meter.total)
        self.block_passes.append(model.cost_per_step(no_grad + grad) if is_fixed_point else model.cost_per_step())
        if device.type == "cuda":
            self.peak_memory = max(self.peak_memory, torch.cuda.max_memory_allocated())

    def result(self) -> dict[str, Any]:
        state = state_bytes(self.objective, self.optimizer)
        peak_saved = max(self.saved)
        return {
            "name": self.name,
            "parameters": self.model.num_parameters(),
            "step_time_median_s": statistics.median(self.times),
            "step_time_mean_s": statistics.mean(self.times),
            "step_time_stdev_s": statistics.stdev(self.times) if len(self.times) > 1 else 0.0,
            "step_times_s": self.times,
            "peak_saved_activation_bytes": peak_saved,
            "state_bytes": state,
            "memory_bytes": self.peak_memory if self.device.type == "cuda" else state + peak_saved,
            "block_passes_per_step_mean": statistics.mean(self.block_passes),
        }


def write_report(report: dict[str, Any], stem: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{stem}.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    rows = report["results"]
    baseline = rows[0]
    memory_kind = "peak CUDA memory" if report["device"] == "cuda" else "parameters + gradients + AdamW state + peak saved activations"
    lines = [
        f"# Training step: FP-MDLM against its source MDLM ({report['preset']} preset)",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Device: {report['device_name']}; batch {report['batch_size']} x {report['seq_len']} tokens; {report['steps']} measured steps per model after {report['warmup']} warm-up steps, the models taking turns step by step; torch {report['torch']}.",
        f"Memory column: {memory_kind}.",
        "",
        "| model | parameters | block passes / step | median step time (s) | time vs source | memory (MiB) | memory vs source | saved activations (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['parameters']:,} | {row['block_passes_per_step_mean']:.1f} | {row['step_time_median_s']:.3f} (mean {row['step_time_mean_s']:.3f} ± {row['step_time_stdev_s']:.3f}) | "
            f"{row['step_time_median_s'] / baseline['step_time_median_s']:.2f}x | {row['memory_bytes'] / 2**20:.1f} | {row['memory_bytes'] / baseline['memory_bytes']:.2f}x | "
            f"{row['peak_saved_activation_bytes'] / 2**20:.1f} |"
        )
    lines.append("")
    markdown_path = RESULTS / f"{stem}.md"
    markdown_path.write_text("\n".join(lines))
    return json_path, markdown_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence [default: the preset's model_length]")
    parser.add_argument("--steps", type=int, default=6, help="measured steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps before measuring")
    parser.add_argument("--injection", default="fpdm")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: torch's]")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    device = torch.device(arguments.device)
    seq_len = arguments.seq_len or PRESETS[arguments.preset]["model_length"]

    source, fixed_point = build_models(arguments.preset, arguments.injection)
    options = dict(batch_size=arguments.batch_size, seq_len=seq_len, device=device, seed=arguments.seed)
    runners = [
        Runner("MDLM source (12 blocks)", source, consistency=False, **options),
        Runner("FP-MDLM, S-JFB (MDLM loss)", fixed_point, consistency=False, **options),
        Runner("FP-MDLM, S-JFB + consistency", copy.deepcopy(fixed_point), consistency=True, **options),
    ]
    # Round-robin steps, so that load from other processes falls on every model alike.
    for step in range(arguments.warmup + arguments.steps):
        for runner in runners:
            runner.step(record=step >= arguments.warmup)
    results = [runner.result() for runner in runners]
    report = {
        "command": "python " + " ".join(sys.argv),
        "preset": arguments.preset,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads",
        "batch_size": arguments.batch_size,
        "seq_len": seq_len,
        "steps": arguments.steps,
        "warmup": arguments.warmup,
        "torch": torch.__version__,
        "results": results,
    }
    json_path, markdown_path = write_report(report, f"training-{device.type}-{arguments.preset}")
    print(markdown_path.read_text())
    print(f"wrote {json_path} and {markdown_path}")


if __name__ == "__main__":
    main()
