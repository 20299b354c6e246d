"""One training step's forward passes: the model under training wrapped as one module that returns the loss terms.

Wrapping the whole computation in :class:`TrainingObjective` lets accelerate's DDP, FSDP or
DeepSpeed wrapper see a single ``forward``, so gradient synchronisation and parameter gathering
work unchanged whatever model is trained. The frozen teacher stays outside the wrapper. The
terms themselves are the pure functions of :mod:`mgm2fp.training.objectives`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from mgm2fp.families.base import MaskedGenerativeModel
from mgm2fp.fixed_point.model import FixedPointMGM
from mgm2fp.training.objectives import LogLinearSchedule, consistency_loss, distillation_kl, mask_tokens, mdlm_loss, nested_masks, sample_times

logger = logging.getLogger(__name__)


def model_outputs(model: MaskedGenerativeModel, tokens: torch.Tensor, sigma: torch.Tensor, *, num_iterations: int | None = None, no_grad_iterations: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` on ``tokens`` ``[B, L]`` and return ``(logits [B, L, V], final pre-logit hidden [B, L, D])``.

    A fixed-point model runs ``no_grad_iterations`` solver iterations without gradient, then
    ``num_iterations`` with gradient (stochastic Jacobian-free backprop). A plain model runs its
    blocks once and ignores both counts.
    """
    if isinstance(model, FixedPointMGM):
        output = model.forward_with_state(tokens, sigma, num_iterations=num_iterations, no_grad_iterations=no_grad_iterations)
        return output.logits, output.hidden
    hidden, context = model.embed(tokens, sigma)  # [B, L, D]
    hidden = model.run_blocks(hidden, context)
    return model.head(hidden, context), hidden


@dataclass
class StepInputs:
    """The noised inputs of one micro-batch: student input, and the cleaner input when a term needs it."""

    x0: torch.Tensor  # [B, L] clean tokens
    x_student: torch.Tensor  # [B, L]
    t_student: torch.Tensor  # [B]
    x_cleaner: torch.Tensor | None = None  # [B, L], cleaner mask a subset of the student's
    t_cleaner: torch.Tensor | None = None  # [B]

    def to(self, device: torch.device | str) -> "StepInputs":
        """Return the same inputs on ``device``."""
        moved = [None if tensor is None else tensor.to(device) for tensor in (self.x0, self.x_student, self.t_student, self.x_cleaner, self.t_cleaner)]
        return StepInputs(*moved)


def make_inputs(x0: torch.Tensor, *, mask_token_id: int, schedule: LogLinearSchedule, antithetic: bool, nested: bool, gap: tuple[float, float], generator: torch.Generator | None = None) -> StepInputs:
    """Draw times and masks for ``x0`` ``[B, L]``: nested student/cleaner masks when ``nested``, else one mask."""
    t_student = sample_times(x0.shape[0], eps=schedule.eps, antithetic=antithetic, generator=generator, device=x0.device)
    if not nested:
        x_student = mask_tokens(x0, schedule.move_chance(t_student), mask_token_id, generator=generator)
        return StepInputs(x0, x_student, t_student)
    x_student, x_cleaner, t_cleaner = nested_masks(x0, t_student, mask_token_id=mask_token_id, gap=gap, schedule=schedule, generator=generator)
    return StepInputs(x0, x_student, t_student, x_cleaner, t_cleaner)


class TrainingObjective(nn.Module):
    """The model under training plus its loss computation, as one module for accelerate to wrap."""

    def __init__(self, model: MaskedGenerativeModel, *, schedule: LogLinearSchedule | None = None, consistency_reduction: str = "mean") -> None:
        super().__init__()
        self.model = model
        self.schedule = schedule or LogLinearSchedule()
        self.consistency_reduction = consistency_reduction

    def forward(
        self,
        inputs: StepInputs,
        *,
        teacher_logits: torch.Tensor | None = None,
        distill_temperature: float = 1.5,
        consistency: bool = False,
        num_iterations: int | None = None,
        no_grad_iterations: int = 0,
    ) -> dict[str, torch.Tensor]:
        """Return the unweighted loss terms: ``mdlm`` always, ``kl`` with ``teacher_logits``, ``consistency`` when asked."""
        mask_id = self.model.mask_token_id
        sigma = self.schedule.sigma(inputs.t_student)
        logits, hidden = model_outputs(self.model, inputs.x_student, sigma, num_iterations=num_iterations, no_grad_iterations=no_grad_iterations)
        terms = {"mdlm": mdlm_loss(logits, inputs.x0, inputs.x_student, inputs.t_student, mask_token_id=mask_id, schedule=self.schedule)}

        if teacher_logits is not None:
            assert inputs.x_cleaner is not None, "the KL term needs the cleaner input"
            terms["kl"] = distillation_kl(logits, teacher_logits, inputs.x_student, inputs.x_cleaner, mask_token_id=mask_id, temperature=distill_temperature)

        if consistency:
            assert inputs.x_cleaner is not None and inputs.t_cleaner is not None, "the consistency term needs the cleaner input"
            total_iterations = None if num_iterations is None else num_iterations + no_grad_iterations
            with torch.no_grad():
                _, cleaner_hidden = model_outputs(self.model, inputs.x_cleaner, self.schedule.sigma(inputs.t_cleaner), num_iterations=total_iterations)
            terms["consistency"] = consistency_loss(hidden, cleaner_hidden, inputs.x_student, mask_token_id=mask_id, reduction=self.consistency_reduction)
        return terms


def combine_terms(terms: dict[str, torch.Tensor], *, distill_weight: float, consistency_weight: float) -> torch.Tensor:
    """``L = L_MDLM + w_kl * L_KL + w_cons * L_CONS`` with the current (warmed-up) weights."""
    total = terms["mdlm"]
    if "kl" in terms:
        total = total + distill_weight * terms["kl"]
    if "consistency" in terms:
        total = total + consistency_weight * terms["consistency"]
    return total


@torch.no_grad()
def teacher_logits_for(teacher: MaskedGenerativeModel, inputs: StepInputs, schedule: LogLinearSchedule) -> torch.Tensor:
    """Logits ``[B, L, V]`` of the frozen teacher fed the cleaner input at the cleaner time."""
    assert inputs.x_cleaner is not None and inputs.t_cleaner is not None
    logits, _ = model_outputs(teacher, inputs.x_cleaner, schedule.sigma(inputs.t_cleaner))
    return logits
