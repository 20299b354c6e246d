"""Sampling results: the tokens, the budget spent and per-step statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from mgm2fp.sampling.budget import SchedulePlan


@dataclass
class StepStats:
    """Statistics of one denoising step of a batch."""

    index: int
    block_forward_passes: int  # spent by this step (0 when the cache skipped it)
    iterations: int | None  # fixed-point iterations run (batched calls); None without a fixed point
    planned_iterations: int | None = None  # the plan's iterations for this step
    skipped: bool = False  # the step reused the previous output and ran no forward pass
    warm_start: bool = False  # the solver started from the previous step's solution
    revealed: int = 0  # tokens revealed in the whole batch by this step
    residual: float | None = None  # mean over samples of the last relative residual, when tracked
    residuals: list[float] | None = None  # mean relative residual after each iteration, when tracked
    iterations_per_sample: list[int] | None = None  # with early stop: iterations each sample went through
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific values, such as MDLM's time t

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SampleResult:
    """Samples of one batch (one trajectory) and what producing them cost."""

    tokens: torch.Tensor  # [B, L] LongTensor; image models: [B, grid * grid] codes
    block_forward_passes: int  # exactly what the trajectory spent
    budget: int | None
    steps: list[StepStats]
    texts: list[str] | None = None
    seconds: float = 0.0
    family: str = ""
    reuse: str = "none"
    schedule: str | None = None  # None for a model without a fixed point, where it has no effect
    seed: int | None = None
    plan: SchedulePlan | None = None
    labels: torch.Tensor | None = None  # [B] class ids of class-conditional samples; None when unconditional

    @property
    def num_steps(self) -> int:
        """Denoising steps of the trajectory, those skipped by the cache included."""
        return len(self.steps)

    @property
    def iterations(self) -> list[int] | None:
        """Fixed-point iterations run at each step (0 for skipped steps); None without a fixed point."""
        if self.plan is not None and self.plan.iterations is None:
            return None
        if any(step.iterations is None for step in self.steps):
            return None
        return [int(step.iterations) for step in self.steps]

    def sample_iterations(self, sample: int) -> list[int] | None:
        """Return the iterations that sample ``sample`` went through at each step, which differ with early stop."""
        iterations = self.iterations
        if iterations is None:
            return None
        return [step.iterations_per_sample[sample] if step.iterations_per_sample is not None else count for step, count in zip(self.steps, iterations)]

    def to_records(self, *, start_index: int = 0, extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Return one JSON-ready dict per sample, as ``mgm2fp sample`` writes them.

        The budget fields describe the batch's shared trajectory: one batched block call is one
        block forward pass for every sample in it.
        """
        records = []
        rows = self.tokens.tolist()
        labels = self.labels.tolist() if self.labels is not None else None
        for sample, tokens in enumerate(rows):
            record: dict[str, Any] = {
                "index": start_index + sample,
                "tokens": tokens,
                "text": self.texts[sample] if self.texts is not None else None,
                "budget": self.budget,
                "block_forward_passes": self.block_forward_passes,
                "num_steps": self.num_steps,
                "skipped_steps": sum(step.skipped for step in self.steps),
                "iterations": self.sample_iterations(sample),
                "schedule": self.schedule,
                "reuse": self.reuse,
                "seed": self.seed,
                "family": self.family,
            }
            if labels is not None:
                record["label"] = labels[sample]
            record.update(extra or {})
            records.append(record)
        return records
