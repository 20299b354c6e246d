"""MDLM training objective and the masking it needs.

Absorbing-state diffusion with the log-linear schedule (eps = 1e-3, move chance ``(1 - eps) t``),
the SUBS parameterisation and the continuous-time weight ``sigma'(t) / expm1(sigma(t))`` (about
``1 / t``) on masked positions, with antithetic time sampling; as in MDLM (Sahoo et al., arXiv
2406.07524) and used by arXiv 2605.31215. Correlated (nested) masks, the temperature-scaled KL to a
frozen teacher, the cross-step consistency loss, the linear warm-up of their weights and the
S-JFB iteration draws follow arXiv 2605.31215. Every function here is pure: tensors in, tensors out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mgm2fp.evaluation.text import unigram_entropy  # noqa: F401  (re-exported for the trainer)
from mgm2fp.families.mdlm import NEG_INFINITY, subs_log_probs


@dataclass(frozen=True)
class LogLinearSchedule:
    """Log-linear noise: ``sigma(t) = -log(1 - (1 - eps) t)``, so the move chance is ``(1 - eps) t``."""

    eps: float = 1e-3

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.log1p(-(1 - self.eps) * t)

    def move_chance(self, t: torch.Tensor) -> torch.Tensor:
        """Probability that a token is masked at time ``t``."""
        return (1 - self.eps) * t

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Continuous-time ELBO weight ``sigma'(t) / expm1(sigma(t))``."""
        sigma = self.sigma(t)
        dsigma = (1 - self.eps) / (1 - (1 - self.eps) * t)
        return dsigma / torch.expm1(sigma)


def sample_times(batch: int, *, eps: float = 1e-3, antithetic: bool = True, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Draw diffusion times ``[B]`` in ``[eps, 1]``; antithetic sampling spreads them evenly."""
    uniform = torch.rand(batch, generator=generator, device=device)
    if antithetic:
        offset = torch.rand(1, generator=generator, device=device)
        uniform = (offset + torch.arange(batch, device=device) / batch) % 1
    return (1 - eps) * uniform + eps


def mask_tokens(x0: torch.Tensor, move_chance: torch.Tensor, mask_token_id: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each token of ``x0`` ``[B, L]`` by the mask with probability ``move_chance`` ``[B]``."""
    draws = torch.rand(x0.shape, generator=generator, device=x0.device)
    return torch.where(draws < move_chance[:, None], torch.full_like(x0, mask_token_id), x0)


def mdlm_loss(logits: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, *, mask_token_id: int, schedule: LogLinearSchedule | None = None, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per-token MDLM loss (negative ELBO in nats per token).

    ``logits`` ``[B, L, V]`` are the raw outputs on ``xt``; only masked positions contribute,
    weighted by the continuous-time weight of ``t`` ``[B]``. ``token_mask`` ``[B, L]`` excludes
    padding from the mean.
    """
    schedule = schedule or LogLinearSchedule()
    log_probs = subs_log_probs(logits.float(), xt, mask_token_id)  # [B, L, V]
    log_p_x0 = log_probs.gather(-1, x0[..., None]).squeeze(-1)  # [B, L]
    per_token = -log_p_x0 * schedule.loss_weight(t)[:, None]  # 0 where xt == x0 (carry-over)
    if token_mask is None:
        return per_token.mean()
    token_mask = token_mask.to(per_token.dtype)
    return (per_token * token_mask).sum() / token_mask.sum().clamp_min(1)


def nested_masks(
    x0: torch.Tensor,
    t_student: torch.Tensor,
    *,
    mask_token_id: int,
    gap: tuple[float, float] = (0.05, 0.30),
    schedule: LogLinearSchedule | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Correlated student and cleaner inputs for the consistency and teacher losses.

    Draws ``gap ~ U[gap_min, gap_max]`` and ``t_c = max(t_s - gap, eps)``, then one uniform ``u_i``
    per position: position i is masked in the student input if ``u_i < 1 - alpha_s`` and in the
    cleaner input if ``u_i < 1 - alpha_c``, so the cleaner mask is a subset of the student mask.
    When the two come out identical, one more student-masked position is revealed in the cleaner
    input. Returns ``(x_student, x_cleaner, t_cleaner)``.
    """
    schedule = schedule or LogLinearSchedule()
    batch = x0.shape[0]
    low, high = gap
    delta = low + (high - low) * torch.rand(batch, generator=generator, device=x0.device)
    t_cleaner = torch.clamp(t_student - delta, min=schedule.eps)
    draws = torch.rand(x0.shape, generator=generator, device=x0.device)
    student_masked = draws < schedule.move_chance(t_student)[:, None]  # [B, L]
    cleaner_masked = draws < schedule.move_chance(t_cleaner)[:, None]  # subset of student_masked

    identical = (student_masked == cleaner_masked).all(dim=1) & student_masked.any(dim=1)
    if identical.any():
        # Reveal the student-masked position with the largest draw (the last one to be masked).
        scores = torch.where(cleaner_masked, draws, torch.full_like(draws, -1.0))
        reveal = scores.argmax(dim=1)
        rows = identical.nonzero(as_tuple=True)[0]
        cleaner_masked[rows, reveal[rows]] = False

    mask = torch.full_like(x0, mask_token_id)
    return torch.where(student_masked, mask, x0), torch.where(cleaner_masked, mask, x0), t_cleaner


def masked_log_softmax(logits: torch.Tensor, mask_token_id: int, *, temperature: float = 1.0) -> torch.Tensor:
    """Log-softmax of ``logits / temperature`` ``[B, L, V]`` with the mask token excluded (SUBS's zero-mask rule)."""
    scaled = logits.float() / temperature
    scaled = scaled.clone()
    scaled[..., mask_token_id] += NEG_INFINITY
    return torch.log_softmax(scaled, dim=-1)


def distillation_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    x_student: torch.Tensor,
    x_teacher: torch.Tensor,
    *,
    mask_token_id: int,
    temperature: float = 1.5,
) -> torch.Tensor:
    """Temperature-scaled KL to a frozen teacher fed the cleaner input (arXiv 2605.31215, adaptation loss).

    Returns ``tau^2 * mean_{i student-masked} KL(p_teacher^tau(i) || p_student^tau(i))``. The
    teacher distribution is SUBS-parameterised on its own input ``x_teacher``. At positions that
    are masked for the student but visible to the teacher it is one-hot on the visible token, so
    there the term is the student's cross-entropy at temperature ``tau``. Logits are ``[B, L, V]``
    and inputs ``[B, L]``. Returns a scalar, 0 when no position is masked for the student.
    """
    student_log_probs = masked_log_softmax(student_logits, mask_token_id, temperature=temperature)  # [B, L, V]
    teacher_log_probs = subs_log_probs(teacher_logits.float() / temperature, x_teacher, mask_token_id)  # [B, L, V]
    teacher_probs = teacher_log_probs.exp()
    # Terms with p_teacher = 0 contribute nothing; the where keeps -1e6 stand-ins out of the sum.
    pointwise = torch.where(teacher_probs > 0, teacher_probs * (teacher_log_probs - student_log_probs), torch.zeros_like(teacher_probs))
    per_position = pointwise.sum(dim=-1)  # [B, L]
    student_masked = (x_student == mask_token_id).to(per_position.dtype)
    mean_kl = (per_position * student_masked).sum() / student_masked.sum().clamp_min(1)
    return temperature**2 * mean_kl


def consistency_loss(student_hidden: torch.Tensor, cleaner_hidden: torch.Tensor, x_student: torch.Tensor, *, mask_token_id: int, reduction: str = "mean") -> torch.Tensor:
    """Cross-step consistency ``mean_{i student-masked} ||h_s(i) - stopgrad(h_c(i))||^2`` (arXiv 2605.31215).

    ``student_hidden`` and ``cleaner_hidden`` are the final pre-logit hidden states ``[B, L, D]``
    of the student (noisier) and cleaner inputs. Over the hidden size the squared difference is
    averaged (``reduction="mean"``, the MSE that the paper's ablation names) or summed (``"sum"``,
    D times larger), then averaged over the positions masked in ``x_student`` ``[B, L]``. No
    gradient reaches the cleaner branch.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"unknown reduction '{reduction}'; use mean or sum")
    difference = student_hidden.float() - cleaner_hidden.detach().float()  # [B, L, D]
    squared = difference.pow(2)
    per_position = squared.mean(dim=-1) if reduction == "mean" else squared.sum(dim=-1)  # [B, L]
    student_masked = (x_student == mask_token_id).to(per_position.dtype)
    return (per_position * student_masked).sum() / student_masked.sum().clamp_min(1)


def linear_warmup(step: int, *, final_value: float, warmup_steps: int) -> float:
    """Weight at optimizer ``step``: linear from 0 at step 0 to ``final_value`` at ``warmup_steps``, then constant."""
    if warmup_steps <= 0:
        return final_value
    return final_value * min(1.0, step / warmup_steps)


def sample_jfb_iterations(no_grad_range: tuple[int, int], grad_range: tuple[int, int], *, generator: torch.Generator | None = None) -> tuple[int, int]:
    """Draw ``(N_ng, N_g)`` for stochastic Jacobian-free backprop, each uniform over its inclusive range.

    arXiv 2605.31215 uses ``N_ng ~ U{0..4}`` iterations without gradient, then ``N_g ~ U{3..6}``
    with gradient, and backpropagates through the last ``N_g`` only.
    """
    no_grad = int(torch.randint(no_grad_range[0], no_grad_range[1] + 1, (1,), generator=generator).item())
    grad = int(torch.randint(grad_range[0], grad_range[1] + 1, (1,), generator=generator).item())
    return no_grad, grad
