"""Ancestral sampler of MDLM (absorbing-state diffusion with the log-linear schedule).

Sampling starts from an all-mask sequence and walks the time from ``t = 1`` down to 0 in
``num_steps`` equal steps. At the step from ``t`` to ``s``, every masked position is revealed with
probability ``(t - s) / t`` (the log-linear schedule's eps cancels out) to a token drawn from
``p(x0 | x_t)`` in float64; revealed tokens are copied. The last step goes to ``s = 0`` and so
reveals every remaining position: a finished sample contains no mask token, and ``steps``
forward passes are the whole cost. (The reference MDLM code instead ends at ``t = eps`` and runs
one more forward pass that fills the remaining masks by argmax.)

The cached variant (default) makes no forward pass when the previous step revealed nothing, and
reuses the previous logits. This is exact only when the model ignores the time, so the cache is
off for time-conditioned checkpoints. A skipped step spends no budget. References: Sahoo et al.,
arXiv 2406.07524; arXiv 2605.31215 for the budget.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from mgm2fp.errors import ConfigError
from mgm2fp.families.base import MaskedGenerativeModel
from mgm2fp.sampling.budget import SchedulePlan
from mgm2fp.sampling.categorical import sample_categorical
from mgm2fp.sampling.registry import register_sampler
from mgm2fp.sampling.result import SampleResult
from mgm2fp.sampling.reuse import ReuseConfig
from mgm2fp.sampling.runner import DenoisingRunner, SolverOptions, StepCallback
from mgm2fp.training.objectives import LogLinearSchedule

logger = logging.getLogger(__name__)

FAMILY = "mdlm"


def sample_mdlm(
    model: MaskedGenerativeModel,
    *,
    num_samples: int,
    seq_len: int | None,
    schedule_plan: SchedulePlan,
    reuse: ReuseConfig,
    generator: torch.Generator,
    solver_options: SolverOptions | None = None,
    callback: StepCallback | None = None,
    top_p: float | None = None,
    cache: bool = True,
    eps: float = 1e-3,
) -> SampleResult:
    """Draw ``num_samples`` sequences of ``seq_len`` tokens with the MDLM ancestral sampler.

    ``seq_len`` defaults to the checkpoint's ``model_length``. ``top_p`` enables nucleus sampling,
    ``cache`` the skipping of steps that changed nothing, ``eps`` is the log-linear schedule's
    offset (it only matters for time-conditioned checkpoints).

    Raises:
        ConfigError: for an invalid length or option.
    """
    seq_len = _resolve_length(model, seq_len)
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p={top_p} is invalid; use a probability mass in (0, 1]")
    device = next(model.parameters()).device
    mask_token_id = model.mask_token_id
    schedule = LogLinearSchedule(eps)
    use_cache = cache and not _time_conditioned(model)
    if cache and not use_cache:
        logger.info("the model is time conditioned, so every step runs a forward pass (no cache)")

    runner = DenoisingRunner(model, schedule_plan, reuse, solver_options, callback=callback)
    tokens = torch.full((num_samples, seq_len), mask_token_id, dtype=torch.long, device=device)  # [B, L]
    cached_logits: torch.Tensor | None = None
    started = time.perf_counter()
    num_steps = schedule_plan.num_steps
    for step in range(num_steps):
        t = 1.0 - step / num_steps
        s = 1.0 - (step + 1) / num_steps
        if cached_logits is not None:
            runner.skip(step=step, t=t)
            logits = cached_logits
        else:
            sigma = schedule.sigma(torch.full((num_samples,), t, device=device))  # [B]
            logits = runner.forward(tokens, sigma, step=step, t=t)  # [B, L, V]

        masked = tokens == mask_token_id  # [B, L]
        draws = torch.rand(tokens.shape, generator=generator, device=device, dtype=torch.float64)
        reveal = masked & (draws < (t - s) / t)  # [B, L]; at the last step s = 0 reveals all
        revealed = int(reveal.sum())
        if revealed:
            tokens = tokens.clone()
            tokens[reveal] = sample_categorical(logits[reveal], generator=generator, top_p=top_p, banned_token_id=mask_token_id)
        cached_logits = logits if use_cache and not revealed else None
        runner.end_step(revealed=revealed)

    return runner.result(tokens, family=FAMILY, seconds=time.perf_counter() - started)


def _resolve_length(model: MaskedGenerativeModel, seq_len: int | None) -> int:
    trained = model.config.get("model_length")
    if seq_len is None:
        if trained is None:
            raise ConfigError("the checkpoint's config has no model_length; pass seq_len")
        return int(trained)
    if isinstance(seq_len, bool) or int(seq_len) != seq_len or seq_len < 1:
        raise ConfigError(f"seq_len={seq_len!r} is invalid; use a positive number of tokens")
    if trained is not None and seq_len > int(trained):
        logger.warning("seq_len %d exceeds the length %d the model was trained on; samples may degrade", seq_len, trained)
    return int(seq_len)


def _time_conditioned(model: Any) -> bool:
    source = getattr(model, "base", model)
    return bool(getattr(source, "time_conditioning", False))


register_sampler(FAMILY, sample_mdlm)
