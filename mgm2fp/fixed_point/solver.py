"""Fixed-point solvers for the weight-shared block.

The published method (arXiv 2605.31215) runs plain Picard iteration ``h <- F(h)`` for a fixed
number of iterations per denoising step. :func:`picard` also supports a per-sample early stop on
the relative residual ``||h(n+1) - h(n)|| / ||h(n)||`` (adaptive depth), which the paper lists as
future work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

StepFunction = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SolverResult:
    """Output of a fixed-point solve."""

    solution: torch.Tensor  # [B, L, D]
    iterations: int  # calls of the step function (each a batched pass through the shared block)
    iterations_per_sample: torch.Tensor  # [B] iterations that changed each sample
    residuals: list[torch.Tensor] = field(default_factory=list)  # one [B] relative residual per iteration


def relative_residual(new: torch.Tensor, old: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``||new - old|| / ||old||`` per sample, ``[B]``, in float32."""
    difference = (new.float() - old.float()).flatten(1).norm(dim=1)
    return difference / old.float().flatten(1).norm(dim=1).clamp_min(eps)


def picard(
    step: StepFunction,
    initial: torch.Tensor,
    *,
    num_iterations: int,
    no_grad_iterations: int = 0,
    tolerance: float | None = None,
    track_residuals: bool = False,
) -> SolverResult:
    """Iterate ``h <- step(h)`` from ``initial``.

    ``no_grad_iterations`` run first without autograd (stochastic Jacobian-free backprop), then
    ``num_iterations`` run with autograd as usual. With ``tolerance``, a sample stops changing
    once its relative residual falls below it, and the loop ends when every sample has stopped.
    """
    batch = initial.shape[0]
    hidden = initial
    if no_grad_iterations > 0:
        with torch.no_grad():
            for _ in range(no_grad_iterations):
                hidden = step(hidden)
        hidden = hidden.detach()

    residuals: list[torch.Tensor] = []
    active = torch.ones(batch, dtype=torch.bool, device=initial.device)
    per_sample = torch.full((batch,), no_grad_iterations, dtype=torch.long, device=initial.device)
    iterations = no_grad_iterations
    for _ in range(num_iterations):
        new_hidden = step(hidden)
        iterations += 1
        per_sample += active.long()
        if tolerance is not None or track_residuals:
            residual = relative_residual(new_hidden.detach(), hidden.detach())
            residuals.append(residual)
        if tolerance is not None:
            new_hidden = torch.where(active[:, None, None], new_hidden, hidden)
            active = active & (residual >= tolerance)
        hidden = new_hidden
        if tolerance is not None and not bool(active.any()):
            break
    return SolverResult(solution=hidden, iterations=iterations, iterations_per_sample=per_sample, residuals=residuals)
