"""The fixed-point masked generative model: embed -> pre blocks -> Fix(F) -> post blocks -> head.

Following arXiv 2605.31215, a denoising step runs ``h_pre = P(z_t)``, ``h_inj = G(h_pre)``,
iterates ``h <- F(h; h_inj)`` with one weight-shared block stack ``F``, then ``H(h*)``. A step
costs ``K_pre + N * K_fp + K_post`` block forward passes while the model stores only
``K_pre + K_fp + K_post`` blocks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mgm2fp.families.base import MaskedGenerativeModel
from mgm2fp.fixed_point.injection import build_injection
from mgm2fp.fixed_point.solver import SolverResult, get_solver
from mgm2fp.layer_plan import LayerPlan

logger = logging.getLogger(__name__)


@dataclass
class FixedPointOutput:
    """Everything one forward pass of a fixed-point model computed."""

    logits: torch.Tensor  # [B, L, V]
    solution: torch.Tensor  # [B, L, D] fixed-point state h*, the warm start of the next step
    h_pre: torch.Tensor  # [B, L, D] output of the pre blocks (the cold start)
    hidden: torch.Tensor  # [B, L, D] final pre-logit hidden state (after the post blocks)
    solver: SolverResult | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class FixedPointBlock(nn.Module):
    """The shared block stack ``F`` with its input injection: ``h <- layers(injection(h, h_inj))``."""

    def __init__(self, layers: list[nn.Module], injection: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.injection = injection

    def __len__(self) -> int:
        return len(self.layers)


class FixedPointMGM(MaskedGenerativeModel):
    """A converted model: the source adapter's embedding and head around pre, fixed-point and post blocks.

    ``forward(tokens, *condition, num_iterations=N, initial_state=None)`` returns logits;
    :meth:`forward_with_state` also returns the fixed-point solution used to warm-start the next
    denoising step.
    """

    family = "mgm2fp"

    def __init__(
        self,
        base: MaskedGenerativeModel,
        *,
        pre_blocks: list[nn.Module],
        fixed_point_layers: list[nn.Module],
        post_blocks: list[nn.Module],
        plan: LayerPlan,
        injection: str = "fpdm",
        num_iterations: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(base.source_config())
        base.blocks = nn.ModuleList()  # the dropped and moved blocks no longer belong to the base
        self.base = base
        self.condition_names = base.condition_names
        self.pre_blocks = nn.ModuleList(pre_blocks)
        self.fixed_point_block = FixedPointBlock(fixed_point_layers, build_injection(injection, base.hidden_size))
        self.post_blocks = nn.ModuleList(post_blocks)
        self.plan = plan
        self.injection_name = injection
        if num_iterations is None:
            num_iterations = max(1, plan.num_source_blocks - len(pre_blocks) - len(post_blocks))
        self.num_iterations = int(num_iterations)
        self.metadata = dict(metadata or {})

    # Interface of the source model -----------------------------------------------------------

    @property
    def source_family(self) -> str:
        return self.base.family

    @property
    def mask_token_id(self) -> int:
        return self.base.mask_token_id

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size

    @property
    def hidden_size(self) -> int:
        return self.base.hidden_size

    @property
    def blocks(self) -> nn.ModuleList:
        """The distinct blocks, in call order (the shared block once)."""
        return nn.ModuleList([*self.pre_blocks, *self.fixed_point_block.layers, *self.post_blocks])

    @property
    def num_blocks(self) -> int:
        return len(self.pre_blocks) + len(self.fixed_point_block) + len(self.post_blocks)

    def cost_per_step(self, num_iterations: int | None = None) -> int:
        """Block forward passes of one denoising step: ``K_pre + N * K_fp + K_post``."""
        iterations = self.num_iterations if num_iterations is None else num_iterations
        return len(self.pre_blocks) + iterations * len(self.fixed_point_block) + len(self.post_blocks)

    def embed(self, tokens: torch.Tensor, *condition: Any) -> tuple[torch.Tensor, Any]:
        return self.base.embed(tokens, *condition)

    def head(self, hidden: torch.Tensor, context: Any) -> torch.Tensor:
        return self.base.head(hidden, context)

    def build_block(self) -> nn.Module:
        return self.base.build_block()

    def position_weights(self, token_weights: torch.Tensor, num_positions: int) -> torch.Tensor:
        return self.base.position_weights(token_weights, num_positions)

    # Forward ---------------------------------------------------------------------------------

    def fixed_point_step(self, hidden: torch.Tensor, h_inj: torch.Tensor, context: Any) -> torch.Tensor:
        """Apply ``F`` once: the injection, then the shared layers."""
        hidden = self.fixed_point_block.injection(hidden, h_inj)
        for layer in self.fixed_point_block.layers:
            hidden = self.run_block(layer, hidden, context)
        return hidden

    def forward_with_state(
        self,
        tokens: torch.Tensor,
        *condition: Any,
        num_iterations: int | None = None,
        initial_state: torch.Tensor | None = None,
        warm_start_weight: torch.Tensor | float | None = None,
        no_grad_iterations: int = 0,
        tolerance: float | None = None,
        track_residuals: bool = False,
        solver: Any = None,
    ) -> FixedPointOutput:
        """Run the model and return logits with the fixed-point state.

        The solver starts from ``h_pre`` unless ``initial_state`` is given. With
        ``warm_start_weight`` (a per-token gamma ``[B, L]`` or a float), it starts from
        ``gamma * initial_state + (1 - gamma) * h_pre``, the warm start of three-state reuse.
        A per-token gamma is mapped to the hidden state's positions by :meth:`position_weights`.
        ``solver`` is ``"picard"`` (the default), ``"anderson"`` or any callable with the signature
        of :func:`mgm2fp.fixed_point.solver.picard`. With ``tolerance`` the solver also receives a
        ``subset_step`` that runs the shared block on the unfinished samples only, provided that
        the family's context can be subset (see :meth:`select_context`).
        """
        iterations = self.num_iterations if num_iterations is None else int(num_iterations)
        hidden, context = self.embed(tokens, *condition)
        for block in self.pre_blocks:
            hidden = self.run_block(block, hidden, context)
        h_pre = hidden  # [B, L, D]
        h_inj = self.fixed_point_block.injection.prepare(h_pre)

        start = h_pre if initial_state is None else initial_state
        if initial_state is not None and warm_start_weight is not None:
            gamma = warm_start_weight
            if torch.is_tensor(gamma) and gamma.ndim == 2:
                gamma = self.position_weights(gamma, h_pre.shape[1])  # [B, P], P >= L with class or register positions
                gamma = gamma[..., None].to(h_pre.dtype)  # [B, P, 1], broadcast over the hidden size
            start = gamma * initial_state + (1 - gamma) * h_pre  # [B, L, D]

        options = {}
        if tolerance is not None:
            options["subset_step"] = self._subset_step(h_inj, context)
        result = get_solver(solver or "picard")(
            lambda state: self.fixed_point_step(state, h_inj, context),
            start,
            num_iterations=iterations,
            no_grad_iterations=no_grad_iterations,
            tolerance=tolerance,
            track_residuals=track_residuals,
            **options,
        )
        hidden = result.solution
        for block in self.post_blocks:
            hidden = self.run_block(block, hidden, context)
        logits = self.head(hidden, context)
        return FixedPointOutput(logits=logits, solution=result.solution, h_pre=h_pre, hidden=hidden, solver=result)

    def _subset_step(self, h_inj: torch.Tensor, context: Any) -> Any:
        """Return ``step(state, index)`` for the samples ``index`` only, or None when the context cannot be subset."""
        if self.select_context(context, torch.zeros(1, dtype=torch.long, device=h_inj.device)) is None:
            return None

        def subset_step(state: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            return self.fixed_point_step(state, h_inj.index_select(0, index), self.select_context(context, index))

        return subset_step

    def forward(self, tokens: torch.Tensor, *condition: Any, num_iterations: int | None = None, initial_state: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_with_state(tokens, *condition, num_iterations=num_iterations, initial_state=initial_state).logits

    def hidden_states(self, tokens: torch.Tensor, *condition: Any, num_iterations: int | None = None) -> list[torch.Tensor]:
        """Return the residual stream after every block call (iterations unrolled)."""
        states: list[torch.Tensor] = []
        hidden, context = self.embed(tokens, *condition)
        for block in self.pre_blocks:
            hidden = self.run_block(block, hidden, context)
            states.append(hidden)
        h_inj = self.fixed_point_block.injection.prepare(hidden)
        for _ in range(self.num_iterations if num_iterations is None else num_iterations):
            hidden = self.fixed_point_step(hidden, h_inj, context)
            states.append(hidden)
        for block in self.post_blocks:
            hidden = self.run_block(block, hidden, context)
            states.append(hidden)
        return states

    # Saved config ----------------------------------------------------------------------------

    def source_config(self) -> dict[str, Any]:
        return self.base.source_config()

    def to_config(self) -> dict[str, Any]:
        """Return the ``config.json`` of a saved fixed-point model."""
        from mgm2fp import __version__

        return {
            "model_type": "mgm2fp",
            "mgm2fp_version": __version__,
            "family": self.base.family,
            "source_config": self.base.source_config(),
            "layer_plan": self.plan.to_dict(),
            "injection": self.injection_name,
            "num_iterations": self.num_iterations,
            "num_parameters": self.num_parameters(),
            **{key: value for key, value in self.metadata.items() if key not in ("model_type", "family", "layer_plan")},
        }
