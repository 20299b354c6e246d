"""Fixed-point solvers for the weight-shared block.

The published method (arXiv 2605.31215) runs plain Picard iteration ``h <- F(h)`` for a fixed
number of iterations per denoising step. Two extensions that the paper lists as future work are
available here:

- a per-sample early stop on the relative residual ``||h(n+1) - h(n)|| / ||h(n)||`` (adaptive
  depth). A sample whose residual falls under ``tolerance`` keeps its state, and when the caller
  passes ``subset_step``, later iterations run the block on the unfinished samples only;
- Anderson acceleration (:func:`anderson`), which mixes the last few iterates per sample.

Every solver calls the step function once per iteration on the whole (or the unfinished part of
the) batch, so one iteration costs ``K_fp`` block forward passes whatever the solver.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import torch

from mgm2fp.errors import ConfigError

logger = logging.getLogger(__name__)

StepFunction = Callable[[torch.Tensor], torch.Tensor]
# Called as subset_step(states of the unfinished samples [n, ...], their batch indices [n]).
SubsetStepFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SolverResult:
    """Output of a fixed-point solve."""

    solution: torch.Tensor  # [B, L, D]
    iterations: int  # calls of the step function (each a batched pass through the shared block)
    iterations_per_sample: torch.Tensor  # [B] iterations that changed each sample
    residuals: list[torch.Tensor] = field(default_factory=list)  # one [B] relative residual per iteration


class Solver(Protocol):
    """The signature every solver shares (the sampler and the training code call it this way)."""

    def __call__(
        self,
        step: StepFunction,
        initial: torch.Tensor,
        *,
        num_iterations: int,
        no_grad_iterations: int = 0,
        tolerance: float | None = None,
        track_residuals: bool = False,
        subset_step: SubsetStepFunction | None = None,
    ) -> SolverResult: ...


def relative_residual(new: torch.Tensor, old: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``||new - old|| / ||old||`` per sample, ``[B]``, in float32."""
    difference = (new.float() - old.float()).flatten(1).norm(dim=1)
    return difference / old.float().flatten(1).norm(dim=1).clamp_min(eps)


def _run_no_grad(step: StepFunction, hidden: torch.Tensor, iterations: int) -> torch.Tensor:
    """Run ``iterations`` Picard steps without autograd (the S-JFB warm-up of training)."""
    if iterations <= 0:
        return hidden
    with torch.no_grad():
        for _ in range(iterations):
            hidden = step(hidden)
    return hidden.detach()


def _step_active(step: StepFunction, subset_step: SubsetStepFunction | None, hidden: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Apply the step to the unfinished samples (some have finished); finished samples keep their state.

    With ``subset_step`` the block runs on the unfinished samples only, which saves their share of
    the compute. Without it the whole batch runs and the finished rows are restored afterwards.
    """
    if subset_step is not None:
        index = active.nonzero().squeeze(1)  # [n]
        return hidden.index_copy(0, index, subset_step(hidden.index_select(0, index), index))
    return torch.where(active.view(-1, *[1] * (hidden.ndim - 1)), step(hidden), hidden)


def picard(
    step: StepFunction,
    initial: torch.Tensor,
    *,
    num_iterations: int,
    no_grad_iterations: int = 0,
    tolerance: float | None = None,
    track_residuals: bool = False,
    subset_step: SubsetStepFunction | None = None,
) -> SolverResult:
    """Iterate ``h <- step(h)`` from ``initial`` and return the last state.

    ``no_grad_iterations`` run first without autograd (stochastic Jacobian-free backprop), then
    ``num_iterations`` run with autograd as usual. With ``tolerance``, a sample stops changing
    once its relative residual falls below it, and the loop ends when every sample has stopped.
    ``subset_step(h_active, index)`` lets later iterations skip the finished samples.
    """
    batch = initial.shape[0]
    hidden = _run_no_grad(step, initial, no_grad_iterations)

    residuals: list[torch.Tensor] = []
    active = torch.ones(batch, dtype=torch.bool, device=initial.device)
    per_sample = torch.full((batch,), no_grad_iterations, dtype=torch.long, device=initial.device)
    iterations = no_grad_iterations
    last_residual = torch.full((batch,), float("nan"), device=initial.device)
    remaining = batch  # unfinished samples; the one host synchronisation per iteration updates it
    for _ in range(num_iterations):
        new_hidden = step(hidden) if remaining == batch else _step_active(step, subset_step, hidden, active)
        iterations += 1
        per_sample += active.long()
        if tolerance is not None or track_residuals:
            residual = relative_residual(new_hidden.detach(), hidden.detach())  # [B]
            # A finished sample did not move, so report the residual at which it stopped.
            last_residual = torch.where(active, residual, last_residual)
            residuals.append(last_residual)
        hidden = new_hidden
        if tolerance is not None:
            active = active & (last_residual >= tolerance)
            remaining = int(active.sum())
            if remaining == 0:
                break
    return SolverResult(solution=hidden, iterations=iterations, iterations_per_sample=per_sample, residuals=residuals)


def anderson(
    step: StepFunction,
    initial: torch.Tensor,
    *,
    num_iterations: int,
    no_grad_iterations: int = 0,
    tolerance: float | None = None,
    track_residuals: bool = False,
    subset_step: SubsetStepFunction | None = None,
    memory: int = 5,
    mixing: float = 1.0,
    regularization: float = 1e-6,
) -> SolverResult:
    """Solve ``h = step(h)`` with Anderson acceleration, separately for every sample.

    Iteration k evaluates ``f_k = step(x_k)`` and ``g_k = f_k - x_k``, then picks weights ``alpha``
    (summing to 1) that minimise ``||sum_i alpha_i g_i||`` over the last ``memory`` iterations and
    moves to ``x_{k+1} = sum_i alpha_i (x_i + mixing * g_i)``. The relative residual is
    ``||g_k|| / ||x_k||``, the same quantity that :func:`picard` reports. ``regularization`` is a
    ridge term relative to the mean diagonal of the Gram matrix. Histories are kept in float32,
    ``2 * memory`` copies of the state.

    Autograd does not go through the mixing: when autograd is enabled, Anderson runs the
    ``no_grad_iterations`` and the ``num_iterations`` that follow are plain Picard steps with
    autograd, as in Jacobian-free training of deep equilibrium models. Under ``torch.no_grad``
    (sampling) every iteration is an Anderson iteration.
    """
    if memory < 1:
        raise ConfigError(f"Anderson memory {memory} is invalid; use at least 1 past iterate")
    options = {"memory": memory, "mixing": mixing, "regularization": regularization}
    if torch.is_grad_enabled():
        warm = initial
        if no_grad_iterations > 0:
            warm = _anderson_loop(step, initial, num_iterations=no_grad_iterations, tolerance=None, track_residuals=False, subset_step=None, **options).solution
        result = picard(step, warm, num_iterations=num_iterations, tolerance=tolerance, track_residuals=track_residuals, subset_step=subset_step)
        result.iterations += no_grad_iterations
        result.iterations_per_sample += no_grad_iterations
        return result
    total = no_grad_iterations + num_iterations
    return _anderson_loop(step, initial, num_iterations=total, tolerance=tolerance, track_residuals=track_residuals, subset_step=subset_step, **options)


@torch.no_grad()
def _anderson_loop(
    step: StepFunction,
    initial: torch.Tensor,
    *,
    num_iterations: int,
    tolerance: float | None,
    track_residuals: bool,
    subset_step: SubsetStepFunction | None,
    memory: int,
    mixing: float,
    regularization: float,
) -> SolverResult:
    batch, shape, dtype, device = initial.shape[0], initial.shape, initial.dtype, initial.device
    size = initial[0].numel()
    states = torch.zeros(batch, memory, size, device=device)  # x_i, [B, m, N]
    differences = torch.zeros(batch, memory, size, device=device)  # g_i = f_i - x_i, [B, m, N]

    current = initial.detach().float().reshape(batch, size)  # [B, N]
    active = torch.ones(batch, dtype=torch.bool, device=device)
    per_sample = torch.zeros(batch, dtype=torch.long, device=device)
    last_residual = torch.full((batch,), float("nan"), device=device)
    residuals: list[torch.Tensor] = []
    iterations = 0
    remaining = batch  # unfinished samples; the one host synchronisation per iteration updates it
    for k in range(num_iterations):
        all_active = remaining == batch
        index = torch.arange(batch, device=device) if all_active else active.nonzero().squeeze(1)  # [n]
        x = current if all_active else current.index_select(0, index)  # [n, N]
        inputs = x.reshape(-1, *shape[1:]).to(dtype)
        if all_active:
            outputs = step(inputs)
        elif subset_step is not None:
            outputs = subset_step(inputs, index)
        else:
            outputs = step(current.reshape(shape).to(dtype)).index_select(0, index)
        iterations += 1
        per_sample[index] += 1

        g = outputs.float().reshape(-1, size) - x  # [n, N]
        residual = g.norm(dim=1) / x.norm(dim=1).clamp_min(1e-12)  # [n]
        slot, filled = k % memory, min(k + 1, memory)
        if all_active:
            states[:, slot] = x
            differences[:, slot] = g
            current = _anderson_mix(states[:, :filled], differences[:, :filled], mixing, regularization)
        else:
            states[index, slot] = x
            differences[index, slot] = g
            current[index] = _anderson_mix(states[index, :filled], differences[index, :filled], mixing, regularization)

        if tolerance is not None or track_residuals:
            last_residual = last_residual.index_copy(0, index, residual)
            residuals.append(last_residual)
        if tolerance is not None:
            active = active & (last_residual >= tolerance)
            remaining = int(active.sum())
            if remaining == 0:
                break
    solution = current.reshape(shape).to(dtype)
    return SolverResult(solution=solution, iterations=iterations, iterations_per_sample=per_sample, residuals=residuals)


def _anderson_mix(states: torch.Tensor, differences: torch.Tensor, mixing: float, regularization: float) -> torch.Tensor:
    """Return the next Anderson iterate ``sum_i alpha_i (x_i + mixing * g_i)`` per sample, ``[n, N]``."""
    gram = differences @ differences.transpose(1, 2)  # [n, m, m]
    size = gram.shape[-1]
    scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-30)  # [n]
    eye = torch.eye(size, device=gram.device, dtype=torch.float64)
    system = gram.double() + regularization * scale.double()[:, None, None] * eye  # [n, m, m]
    ones = torch.ones(gram.shape[0], size, 1, device=gram.device, dtype=torch.float64)
    # alpha = H^-1 1 / (1^T H^-1 1) minimises ||sum alpha_i g_i||^2 subject to sum alpha_i = 1.
    weights = torch.linalg.solve(system, ones).squeeze(-1)  # [n, m]
    alpha = (weights / weights.sum(dim=1, keepdim=True)).float()[:, None, :]  # [n, 1, m]
    return (alpha @ (states + mixing * differences)).squeeze(1)  # [n, N]


SOLVERS: dict[str, Callable[..., SolverResult]] = {"picard": picard, "anderson": anderson}


def get_solver(name: str | Callable[..., SolverResult], **options: Any) -> Callable[..., SolverResult]:
    """Return the solver named ``name`` (``picard`` or ``anderson``) with ``options`` bound.

    A callable is returned as it is (with ``options`` bound). Options are solver keywords such as
    Anderson's ``memory``, ``mixing`` and ``regularization``.

    Raises:
        ConfigError: for an unknown solver name.
    """
    if callable(name):
        return partial(name, **options) if options else name
    if name not in SOLVERS:
        raise ConfigError(f"unknown fixed-point solver '{name}'; use one of {', '.join(SOLVERS)}")
    return partial(SOLVERS[name], **options) if options else SOLVERS[name]
