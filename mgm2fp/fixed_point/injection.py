"""Input injection: how the fixed-point block receives the output of the pre blocks.

Each injection has ``prepare(h_pre)`` (run once per denoising step) and ``forward(h, prepared)``
(run before the shared block at every iteration), so one iteration is
``h <- block(injection(h, prepared))``. ``prepare`` computes the projection G and every term that
does not depend on ``h``, so an iteration costs only the part of the injection that does.
Forms, from arXiv 2605.31215 and FPDM (Bai-style fixed-point diffusion models):

- ``add``: ``x = h + W h_inj`` with ``W`` zero-initialised. A one-block range iterated once
  reproduces the source model exactly.
- ``fpdm``: ``x = fc2(GELU_tanh(fc1(concat(h, h_inj))))`` with ``fc1: 2D -> 2D``,
  ``fc2: 2D -> D`` and ``h_inj = Linear(h_pre)``. It starts as the identity in ``h``, using
  ``GELU(a) - GELU(-a) = a`` (which holds for the tanh form too), and ignores ``h_inj`` until
  training moves the weights.
- ``none``: ``x = h``: pure weight tying without injection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mgm2fp.errors import ConfigError


class NoInjection(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()

    def prepare(self, h_pre: torch.Tensor) -> torch.Tensor:
        return h_pre

    def forward(self, hidden: torch.Tensor, h_inj: torch.Tensor) -> torch.Tensor:
        return hidden


class AdditiveInjection(nn.Module):
    """``x = h + W h_inj`` with ``W`` zero-initialised, ``h_inj = h_pre``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.proj.weight)

    def prepare(self, h_pre: torch.Tensor) -> torch.Tensor:
        """Return ``W h_pre`` ``[B, L, D]``, which is the same at every iteration."""
        return self.proj(h_pre)

    def forward(self, hidden: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
        return hidden + prepared


class FPDMInjection(nn.Module):
    """FPDM's injection ``fc2(GELU_tanh(fc1(concat(h, h_inj))))``, initialised to the identity in h."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.input_proj = nn.Linear(dim, dim)
        self.fc1 = nn.Linear(2 * dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.reset_to_identity()

    @torch.no_grad()
    def reset_to_identity(self) -> None:
        if self.fc2.weight.is_meta:  # built only to receive loaded weights
            return
        dim = self.fc2.out_features
        eye = torch.eye(dim, device=self.fc2.weight.device)
        self.input_proj.weight.copy_(eye)
        self.input_proj.bias.zero_()
        # fc1 sends h to (h, -h) and ignores h_inj, fc2 takes the difference, and
        # GELU(a) - GELU(-a) = a makes the whole map the identity in h.
        self.fc1.weight.zero_()
        self.fc1.weight[:dim, :dim] = eye
        self.fc1.weight[dim:, :dim] = -eye
        self.fc1.bias.zero_()
        self.fc2.weight.zero_()
        self.fc2.weight[:, :dim] = eye
        self.fc2.weight[:, dim:] = -eye
        self.fc2.bias.zero_()

    def prepare(self, h_pre: torch.Tensor) -> torch.Tensor:
        """Return the ``h_inj`` half of ``fc1`` plus its bias, ``[B, L, 2D]``.

        ``fc1(concat(h, h_inj)) = W1[:, :D] h + (W1[:, D:] h_inj + b1)``, and the bracket is the
        same at every iteration, so it is computed once per denoising step.
        """
        dim = self.fc2.out_features
        h_inj = self.input_proj(h_pre)  # [B, L, D]
        return F.linear(h_inj, self.fc1.weight[:, dim:], self.fc1.bias)  # [B, L, 2D]

    def forward(self, hidden: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
        dim = self.fc2.out_features
        mixed = F.linear(hidden, self.fc1.weight[:, :dim]) + prepared  # [B, L, 2D]
        return self.fc2(F.gelu(mixed, approximate="tanh"))  # [B, L, D]


INJECTIONS: dict[str, type[nn.Module]] = {"add": AdditiveInjection, "fpdm": FPDMInjection, "none": NoInjection}


def build_injection(name: str, dim: int) -> nn.Module:
    """Return a new injection module of kind ``name``.

    Raises:
        ConfigError: for an unknown name.
    """
    if name not in INJECTIONS:
        raise ConfigError(f"unknown injection '{name}'; use one of {', '.join(INJECTIONS)}")
    return INJECTIONS[name](dim)
