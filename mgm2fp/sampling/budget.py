"""Split a sampling budget into denoising steps and fixed-point iterations.

The budget of a sample is the total number of transformer-block forward passes of its
trajectory, one batched block call counting once (arXiv 2605.31215). A source model spends
``n_blocks`` per step; a fixed-point model spends ``K_pre + N_i * K_fp + K_post`` at step ``i``.
Every family's sampler gets its plan from :func:`plan_budget`, so all families split a budget the
same way.

Default split for a fixed-point model: the number of steps is
``budget // cost_per_step(model.num_iterations)``. This equals the source model's number of steps
when the default depth replaces the dropped blocks one for one. Every step then gets one
iteration, and the schedule spreads the remaining iterations.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

from mgm2fp.errors import ConfigError
from mgm2fp.families.base import MaskedGenerativeModel

logger = logging.getLogger(__name__)

SCHEDULES = ("decreasing", "fixed", "increasing")
# Ratio between the iterations of the first and the last step under "decreasing" (and the
# reverse under "increasing"). arXiv 2605.31215 reports that decreasing beats fixed and
# increasing but does not give its ramp, so 3 is our choice.
DEFAULT_RAMP = 3.0


@dataclass(frozen=True)
class SchedulePlan:
    """Budget plan of a trajectory: its steps and, for a fixed-point model, the iterations of each."""

    num_steps: int
    step_costs: tuple[int, ...]  # block forward passes planned for each step
    iterations: tuple[int, ...] | None  # fixed-point iterations per step; None without a fixed point
    budget: int | None  # the limit the plan respects, None when only steps were given
    schedule: str

    @property
    def total_cost(self) -> int:
        """Block forward passes of the plan when no step is skipped and no sample stops early."""
        return sum(self.step_costs)

    def describe(self) -> str:
        """Return a one-line summary such as ``8 steps, 96 of budget 96, iterations 15-5``."""
        text = f"{self.num_steps} steps, {self.total_cost} block forward passes"
        if self.budget is not None:
            text += f" of budget {self.budget}"
        if self.iterations is not None:
            text += f", {self.schedule} iterations {self.iterations[0]}-{self.iterations[-1]}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def step_cost_terms(model: MaskedGenerativeModel) -> tuple[int, int]:
    """Return ``(fixed, per_iteration)``: one step costs ``fixed + N * per_iteration`` block passes.

    ``per_iteration`` is 0 for a model without a fixed point.
    """
    from mgm2fp.fixed_point.model import FixedPointMGM

    if isinstance(model, FixedPointMGM):
        fixed = model.cost_per_step(0)
        return fixed, model.cost_per_step(1) - fixed
    return model.cost_per_step(), 0


def plan_budget(
    model: MaskedGenerativeModel,
    *,
    budget: int | None = None,
    steps: int | None = None,
    schedule: str = "decreasing",
    num_iterations: int | None = None,
    ramp: float = DEFAULT_RAMP,
) -> SchedulePlan:
    """Turn a budget and/or a number of steps into a :class:`SchedulePlan` for ``model``.

    For a source model, ``steps`` defaults to ``budget // n_blocks``. For a fixed-point model,
    ``steps`` defaults to ``budget // cost_per_step(N)``, where ``N`` is ``num_iterations`` or the
    model's default depth. Its iterations are ``steps * num_iterations`` when ``num_iterations`` is
    given, else whatever the budget leaves after the pre and post blocks. ``schedule`` spreads
    them over the steps. The plan never costs more than ``budget``.

    Raises:
        ConfigError: when neither ``budget`` nor ``steps`` is given, a value is out of range, or the
            budget cannot pay for the requested steps.
    """
    _validate(budget=budget, steps=steps, schedule=schedule, num_iterations=num_iterations, ramp=ramp)
    fixed, per_iteration = step_cost_terms(model)
    if per_iteration == 0:
        if num_iterations is not None:
            raise ConfigError(f"num_iterations={num_iterations} applies only to fixed-point models; this {model.family} model has no fixed point")
        return _plan_without_fixed_point(fixed, budget=budget, steps=steps, schedule=schedule)

    depth = int(num_iterations if num_iterations is not None else getattr(model, "num_iterations", 1))
    if steps is None:
        steps = max(1, budget // (fixed + depth * per_iteration))
    minimum = steps * (fixed + per_iteration)
    if budget is not None and budget < minimum:
        raise ConfigError(f"budget {budget} cannot pay for {steps} steps of at least one iteration ({minimum} block forward passes); raise the budget to {minimum} or lower the steps")
    if num_iterations is not None or budget is None:
        total = steps * depth
        if budget is not None and steps * fixed + total * per_iteration > budget:
            affordable = (budget - steps * fixed) // (per_iteration * steps)
            raise ConfigError(f"{steps} steps of {depth} iterations cost {steps * (fixed + depth * per_iteration)} block forward passes, more than the budget {budget}; use at most {affordable} iterations or fewer steps")
    else:
        total = (budget - steps * fixed) // per_iteration
    iterations = allocate_iterations(total, steps, schedule, ramp=ramp)
    costs = tuple(fixed + count * per_iteration for count in iterations)
    plan = SchedulePlan(num_steps=steps, step_costs=costs, iterations=iterations, budget=budget, schedule=schedule)
    _log_unused(plan)
    return plan


def allocate_iterations(total: int, steps: int, schedule: str = "decreasing", *, ramp: float = DEFAULT_RAMP) -> tuple[int, ...]:
    """Split ``total`` iterations over ``steps`` steps, at least one each, and return them in step order.

    ``fixed`` gives every step the same count (the first ``total % steps`` steps get one more).
    ``decreasing`` gives each step one iteration and spreads the rest in proportion to weights
    that fall linearly from ``ramp`` at the first step to 1 at the last. ``increasing`` is the
    reverse. Rounding uses the largest remainder, so the counts sum to ``total`` and stay monotone.

    Raises:
        ConfigError: when ``total < steps`` or the schedule is unknown.
    """
    _validate(budget=None, steps=steps, schedule=schedule, num_iterations=None, ramp=ramp)
    if total < steps:
        raise ConfigError(f"{total} iterations cannot cover {steps} steps; every step needs at least one iteration")
    if schedule == "fixed" or steps == 1:
        base, remainder = divmod(total, steps)
        return tuple(base + (1 if index < remainder else 0) for index in range(steps))

    weights = [ramp - (ramp - 1.0) * index / (steps - 1) for index in range(steps)]
    if schedule == "increasing":
        weights.reverse()
    extra = total - steps
    shares = [extra * weight / sum(weights) for weight in weights]
    counts = [1 + math.floor(share) for share in shares]
    leftover = total - sum(counts)
    # Largest remainder first; on a tie the step that comes first in the ramp wins, which keeps
    # the counts monotone.
    order = sorted(range(steps), key=lambda index: (math.floor(shares[index]) - shares[index], -weights[index]))
    for index in order[:leftover]:
        counts[index] += 1
    return tuple(counts)


def _plan_without_fixed_point(cost: int, *, budget: int | None, steps: int | None, schedule: str) -> SchedulePlan:
    if steps is None:
        steps = budget // cost
        if steps == 0:
            raise ConfigError(f"budget {budget} is below the cost of one denoising step ({cost} block forward passes); raise it to at least {cost}")
    if budget is not None and steps * cost > budget:
        raise ConfigError(f"{steps} steps cost {steps * cost} block forward passes, more than the budget {budget}; use at most {budget // cost} steps or raise the budget")
    plan = SchedulePlan(num_steps=steps, step_costs=(cost,) * steps, iterations=None, budget=budget, schedule=schedule)
    _log_unused(plan)
    return plan


def _log_unused(plan: SchedulePlan) -> None:
    if plan.budget is not None and plan.total_cost < plan.budget:
        logger.info("the plan spends %d of the budget %d block forward passes; the rest does not pay for a whole step or iteration", plan.total_cost, plan.budget)


def _validate(*, budget: int | None, steps: int | None, schedule: str, num_iterations: int | None, ramp: float) -> None:
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule '{schedule}'; use one of {', '.join(SCHEDULES)}")
    if budget is None and steps is None:
        raise ConfigError("neither a budget nor a number of steps was given; pass budget= (block forward passes) or steps=")
    for name, value in (("budget", budget), ("steps", steps), ("num_iterations", num_iterations)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            raise ConfigError(f"{name}={value!r} is invalid; use a positive integer")
    if not ramp >= 1.0:
        raise ConfigError(f"ramp={ramp} is invalid; use a ratio of at least 1 between the first and the last step")
