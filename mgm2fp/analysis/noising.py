"""Noising of clean inputs to a noise level ``t`` for the layer analysis, per model family.

A :class:`NoisingScheme` turns clean tokens into the model's input at noise level ``t`` in
``[0, 1]`` and returns the condition arguments that ``model.hidden_states(inputs, *condition)``
takes. Families register their scheme with :func:`register_noising_scheme`; a family without one
gets the MDLM scheme: absorbing-state masking with the log-linear schedule (move chance
``(1 - eps) t``, eps = 1e-3) and ``sigma(t) = -log(1 - (1 - eps) t)`` as the condition.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mgm2fp.families.base import MaskedGenerativeModel
from mgm2fp.training.objectives import LogLinearSchedule, mask_tokens

logger = logging.getLogger(__name__)

NoiseInputs = Callable[[MaskedGenerativeModel, torch.Tensor, float, torch.Generator], tuple[torch.Tensor, tuple[Any, ...]]]


@dataclass(frozen=True)
class NoisingScheme:
    """A family's input noising for the analysis, and its default sequence length."""

    # (model, clean tokens [B, L] on the CPU, t, CPU generator) -> (model input, condition args).
    noise_inputs: NoiseInputs
    # The sequence length the model was trained on, or None when the config does not give it.
    default_length: Callable[[MaskedGenerativeModel], int | None] = lambda model: None
    description: str = ""


def mask_log_linear(model: MaskedGenerativeModel, tokens: torch.Tensor, t: float, generator: torch.Generator) -> tuple[torch.Tensor, tuple[Any, ...]]:
    """Mask each token with probability ``(1 - eps) t`` and return ``(masked [B, L], (sigma [B],))``."""
    schedule = LogLinearSchedule()
    times = torch.full((tokens.shape[0],), float(t), dtype=torch.float64)  # [B]
    masked = mask_tokens(tokens, schedule.move_chance(times), model.mask_token_id, generator=generator)
    return masked, (schedule.sigma(times).float(),)


def _config_length(model: MaskedGenerativeModel) -> int | None:
    length = model.config.get("model_length")
    return int(length) if length else None


MDLM_NOISING = NoisingScheme(noise_inputs=mask_log_linear, default_length=_config_length, description="absorbing-state masking, log-linear schedule (MDLM)")

_SCHEMES: dict[str, NoisingScheme] = {"mdlm": MDLM_NOISING}


def register_noising_scheme(family: str, scheme: NoisingScheme) -> NoisingScheme:
    """Use ``scheme`` for models whose ``family`` attribute is ``family`` (replacing any earlier one)."""
    if family in _SCHEMES:
        logger.warning("replacing the noising scheme of model family '%s'", family)
    _SCHEMES[family] = scheme
    return scheme


def noising_scheme(model: MaskedGenerativeModel) -> NoisingScheme:
    """Return the scheme registered for ``model.family``, or the MDLM scheme when there is none."""
    scheme = _SCHEMES.get(model.family)
    if scheme is None:
        logger.warning("no noising scheme registered for model family '%s'; masking with the MDLM log-linear schedule", model.family)
        return MDLM_NOISING
    return scheme
