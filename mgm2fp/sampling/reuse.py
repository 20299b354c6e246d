"""Warm starts of the fixed-point solver across denoising steps: none, full and three-state reuse.

Three-state reuse (3SR, arXiv 2605.31215) starts the solver of each step from
``h0 = gamma * h*_prev + (1 - gamma) * h_pre``, with a per-token ``gamma`` broadcast over the
hidden size:

- ``gamma = 1`` where the token is visible and unchanged since the previous forward pass;
- ``gamma = gamma_min + (gamma_max - gamma_min) * v`` where the token was and still is masked,
  ``v`` being the sample's fraction of visible tokens (defaults 0.75 and 0.90);
- ``gamma = gamma_changed`` (default 0.2) where the token was just revealed or changed.

The rule assumes monotonic decoding. A sampler that remasks a token gets ``gamma_changed`` for
it, which the paper did not evaluate. ``full`` reuse starts from ``h*_prev`` everywhere
(``gamma = 1``) and ``none`` always starts from ``h_pre``. The first step never has a warm start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from mgm2fp.errors import ConfigError

logger = logging.getLogger(__name__)

REUSE_MODES = ("none", "full", "3sr")
GAMMA_MIN = 0.75
GAMMA_MAX = 0.90
GAMMA_CHANGED = 0.2


@dataclass(frozen=True)
class ReuseConfig:
    """Warm-start rule of the solver across denoising steps, with its coefficients."""

    mode: str = "3sr"
    gamma_min: float = GAMMA_MIN
    gamma_max: float = GAMMA_MAX
    gamma_changed: float = GAMMA_CHANGED

    def __post_init__(self) -> None:
        if self.mode not in REUSE_MODES:
            raise ConfigError(f"unknown reuse mode '{self.mode}'; use one of {', '.join(REUSE_MODES)}")
        for name in ("gamma_min", "gamma_max", "gamma_changed"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}={value} is invalid; use a weight between 0 and 1")
        if self.gamma_min > self.gamma_max:
            raise ConfigError(f"gamma_min={self.gamma_min} is larger than gamma_max={self.gamma_max}; swap them")

    @classmethod
    def from_value(cls, value: "str | ReuseConfig", **coefficients: float | None) -> "ReuseConfig":
        """Build a config from a mode name (or copy one), replacing the coefficients that are not None."""
        given = {name: number for name, number in coefficients.items() if number is not None}
        if isinstance(value, ReuseConfig):
            return cls(**{**value.to_dict(), **given})
        return cls(mode=str(value), **given)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "gamma_min": self.gamma_min, "gamma_max": self.gamma_max, "gamma_changed": self.gamma_changed}


def three_state_gamma(
    previous_tokens: torch.Tensor,
    current_tokens: torch.Tensor,
    mask_token_id: int,
    *,
    gamma_min: float = GAMMA_MIN,
    gamma_max: float = GAMMA_MAX,
    gamma_changed: float = GAMMA_CHANGED,
) -> torch.Tensor:
    """Return the 3SR warm-start weight of every token, float32 with the shape of the tokens.

    ``previous_tokens`` are the tokens of the previous forward pass and ``current_tokens`` those of
    this one, ``[B, ...]`` (a sequence ``[B, L]`` or a token grid ``[B, H, W]``). The visible
    fraction is taken per sample over all non-batch dimensions of ``current_tokens``.
    """
    if previous_tokens.shape != current_tokens.shape:
        raise ConfigError(f"token shapes differ between steps ({tuple(previous_tokens.shape)} and {tuple(current_tokens.shape)}); pass the tokens of two steps of one trajectory")
    was_masked = previous_tokens == mask_token_id
    is_masked = current_tokens == mask_token_id
    visible_fraction = (~is_masked).flatten(1).float().mean(dim=1)  # [B]
    gamma_mask = gamma_min + (gamma_max - gamma_min) * visible_fraction  # [B]
    gamma_mask = gamma_mask.view(-1, *[1] * (current_tokens.ndim - 1)).expand(current_tokens.shape)

    gamma = torch.full(current_tokens.shape, gamma_changed, dtype=torch.float32, device=current_tokens.device)
    unchanged_visible = ~is_masked & (previous_tokens == current_tokens)
    gamma = torch.where(unchanged_visible, torch.ones_like(gamma), gamma)
    return torch.where(was_masked & is_masked, gamma_mask, gamma)


def warm_start_weight(config: ReuseConfig, previous_tokens: torch.Tensor, current_tokens: torch.Tensor, mask_token_id: int) -> torch.Tensor | None:
    """Return the ``warm_start_weight`` for :meth:`FixedPointMGM.forward_with_state` under ``config``.

    None means "start from the previous solution as it is" (full reuse). Callers skip the warm
    start entirely for mode ``none`` and at the first step.
    """
    if config.mode == "3sr":
        return three_state_gamma(previous_tokens, current_tokens, mask_token_id, gamma_min=config.gamma_min, gamma_max=config.gamma_max, gamma_changed=config.gamma_changed)
    return None
