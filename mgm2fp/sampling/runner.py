"""One forward pass per denoising step, for any family: plan, warm start, solver and accounting.

A family's sampler decides which tokens to reveal; :class:`DenoisingRunner` runs the model for
it. For a fixed-point model it takes the step's iterations from the plan, warm-starts the solver
from the previous forward pass (reuse mode), and records iterations and residuals. For every model
it measures the block forward passes through the model's block-call counter, the one place where
budget is counted, and checks them against the budget.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mgm2fp.errors import ConfigError
from mgm2fp.families.base import MaskedGenerativeModel
from mgm2fp.fixed_point.solver import SOLVERS, SolverResult, get_solver
from mgm2fp.sampling.budget import SchedulePlan
from mgm2fp.sampling.result import SampleResult, StepStats
from mgm2fp.sampling.reuse import ReuseConfig, warm_start_weight

logger = logging.getLogger(__name__)

StepCallback = Callable[[StepStats], None]


@dataclass(frozen=True)
class SolverOptions:
    """Options of the fixed-point solve at each denoising step."""

    solver: str | Callable[..., SolverResult] = "picard"
    tolerance: float | None = None  # per-sample early stop on the relative residual
    track_residuals: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # solver keywords, such as Anderson's memory

    def __post_init__(self) -> None:
        if isinstance(self.solver, str) and self.solver not in SOLVERS:
            raise ConfigError(f"unknown fixed-point solver '{self.solver}'; use one of {', '.join(SOLVERS)}")
        if self.tolerance is not None and not self.tolerance >= 0:
            raise ConfigError(f"tolerance={self.tolerance} is invalid; use a relative residual of 0 or more")

    @property
    def is_default(self) -> bool:
        return self.solver == "picard" and self.tolerance is None and not self.track_residuals and not self.options


class DenoisingRunner:
    """Run ``model`` once per denoising step of ``plan`` and collect the statistics of every step.

    A sampler calls :meth:`forward` (or :meth:`skip` when it reuses the previous output) once per
    step in order, then :meth:`end_step` once it has updated the tokens, and finally
    :meth:`result`.
    """

    def __init__(
        self,
        model: MaskedGenerativeModel,
        plan: SchedulePlan,
        reuse: ReuseConfig,
        solver: SolverOptions | None = None,
        *,
        callback: StepCallback | None = None,
    ) -> None:
        from mgm2fp.fixed_point.model import FixedPointMGM

        self.model = model
        self.plan = plan
        self.reuse = reuse
        self.solver = solver or SolverOptions()
        self.callback = callback
        self.is_fixed_point = isinstance(model, FixedPointMGM)
        if not self.is_fixed_point and not self.solver.is_default:
            raise ConfigError(f"solver options (solver, tolerance, residual tracking) apply only to fixed-point models; this {model.family} model has no fixed point")
        self._solve = get_solver(self.solver.solver, **self.solver.options) if self.is_fixed_point else None
        self.steps: list[StepStats] = []
        self.spent = 0
        self._previous_tokens: torch.Tensor | None = None
        self._previous_solution: torch.Tensor | None = None
        self._started = 0.0
        self._open = False

    @property
    def mask_token_id(self) -> int:
        return self.model.mask_token_id

    def forward(self, tokens: torch.Tensor, *condition: Any, step: int, **extra: Any) -> torch.Tensor:
        """Run the model on ``tokens`` for step ``step`` and return its logits ``[B, L, V]``.

        ``extra`` values (such as the diffusion time) are stored in the step's statistics.
        """
        self._begin(step)
        before = self.model.block_calls.count
        if self.is_fixed_point:
            logits, stats = self._forward_fixed_point(tokens, condition, step)
        else:
            logits, stats = self.model(tokens, *condition), StepStats(index=step, block_forward_passes=0, iterations=None)
        spent = self.model.block_calls.count - before
        self.spent += spent
        if self.plan.budget is not None and self.spent > self.plan.budget:
            raise RuntimeError(f"sampling spent {self.spent} block forward passes, more than the budget {self.plan.budget}; the plan and the model disagree")
        stats.block_forward_passes = spent
        stats.extra = dict(extra)
        self.steps.append(stats)
        return logits

    def skip(self, *, step: int, **extra: Any) -> None:
        """Record step ``step`` as skipped: the sampler reuses the previous output and spends nothing."""
        self._begin(step)
        iterations = 0 if self.is_fixed_point else None
        planned = self.plan.iterations[step] if self.plan.iterations is not None else None
        self.steps.append(StepStats(index=step, block_forward_passes=0, iterations=iterations, planned_iterations=planned, skipped=True, extra=dict(extra)))

    def end_step(self, *, revealed: int) -> StepStats:
        """Close the current step with the number of tokens it revealed and return its statistics."""
        if not self._open:
            raise RuntimeError("end_step() called without forward() or skip() for the step")
        self._open = False
        stats = self.steps[-1]
        stats.revealed = int(revealed)
        stats.seconds = time.perf_counter() - self._started
        if self.callback is not None:
            self.callback(stats)
        return stats

    def result(self, tokens: torch.Tensor, *, family: str, seconds: float = 0.0) -> SampleResult:
        """Return the :class:`SampleResult` of the finished trajectory."""
        if len(self.steps) != self.plan.num_steps or self._open:
            raise RuntimeError(f"the sampler ran {len(self.steps)} of {self.plan.num_steps} planned steps")
        return SampleResult(
            tokens=tokens,
            block_forward_passes=self.spent,
            budget=self.plan.budget,
            steps=self.steps,
            seconds=seconds,
            family=family,
            reuse=self.reuse.mode if self.is_fixed_point else "none",
            schedule=self.plan.schedule if self.plan.iterations is not None else None,
            plan=self.plan,
        )

    def _begin(self, step: int) -> None:
        if self._open:
            raise RuntimeError(f"step {step} started before end_step() closed step {self.steps[-1].index}")
        if step != len(self.steps) or step >= self.plan.num_steps:
            raise RuntimeError(f"step {step} is out of order: expected step {len(self.steps)} of {self.plan.num_steps}")
        self._open = True
        self._started = time.perf_counter()

    def _forward_fixed_point(self, tokens: torch.Tensor, condition: tuple[Any, ...], step: int) -> tuple[torch.Tensor, StepStats]:
        planned = self.plan.iterations[step]
        initial_state = weight = None
        warm = self.reuse.mode != "none" and self._previous_solution is not None
        if warm:
            initial_state = self._previous_solution
            weight = warm_start_weight(self.reuse, self._previous_tokens, tokens, self.mask_token_id)
        output = self.model.forward_with_state(
            tokens,
            *condition,
            num_iterations=planned,
            initial_state=initial_state,
            warm_start_weight=weight,
            tolerance=self.solver.tolerance,
            track_residuals=self.solver.track_residuals,
            solver=self._solve,
        )
        if self.reuse.mode != "none":
            self._previous_solution = output.solution
            self._previous_tokens = tokens.clone()
        return output.logits, _solver_stats(step, output.solver, planned=planned, warm=warm, early_stop=self.solver.tolerance is not None)


def _solver_stats(step: int, result: SolverResult, *, planned: int, warm: bool, early_stop: bool) -> StepStats:
    residuals = [float(values.mean()) for values in result.residuals] if result.residuals else None
    return StepStats(
        index=step,
        block_forward_passes=0,
        iterations=int(result.iterations),
        planned_iterations=planned,
        warm_start=warm,
        residual=residuals[-1] if residuals else None,
        residuals=residuals,
        iterations_per_sample=[int(count) for count in result.iterations_per_sample.tolist()] if early_stop else None,
    )
