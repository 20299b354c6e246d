"""The common interface that every model family implements.

A family adapter turns a checkpoint into a :class:`MaskedGenerativeModel`: an embedding step that
returns the first hidden state and a *context* (what every block needs, such as a timestep
embedding or rotary tables), a list of blocks called as ``block(h, context)``, and a head that maps
the last hidden state to logits. Surgery, the fixed-point solver, sampling and training only use
this interface, so a new family costs one adapter module and its fixtures.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
from torch import nn

logger = logging.getLogger(__name__)


class BlockCallCounter:
    """Count transformer-block forward passes, the unit of the sampling budget.

    One call of one block on a whole batch counts once, whatever the batch size. Every code path
    that runs a block (the source model and the fixed-point model alike) goes through
    :meth:`MaskedGenerativeModel.run_block`, so accounting cannot drift between code paths.
    """

    def __init__(self) -> None:
        self.count = 0

    def reset(self) -> int:
        """Set the count to zero and return the count before the reset."""
        previous, self.count = self.count, 0
        return previous


class MaskedGenerativeModel(nn.Module):
    """Base class of family adapters (and of the fixed-point model built from them).

    Subclasses set :attr:`family`, build :attr:`blocks` and implement :meth:`embed`,
    :meth:`head`, :meth:`build_block` and :meth:`forward`.
    """

    family: ClassVar[str] = ""
    # Name of the argument that carries the noise level or the class (for messages and docs).
    condition_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        self.block_calls = BlockCallCounter()

    # Interface -------------------------------------------------------------------------------

    @property
    def mask_token_id(self) -> int:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        """Number of logits per position."""
        raise NotImplementedError

    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def embed(self, tokens: torch.Tensor, *condition: Any) -> tuple[torch.Tensor, Any]:
        """Embed ``tokens`` and return the first hidden state ``[B, L, D]`` and the context."""
        raise NotImplementedError

    def head(self, hidden: torch.Tensor, context: Any) -> torch.Tensor:
        """Map the last hidden state ``[B, L, D]`` to logits."""
        raise NotImplementedError

    def build_block(self) -> nn.Module:
        """Return a new, randomly initialised block with this model's sizes."""
        raise NotImplementedError

    def source_config(self) -> dict[str, Any]:
        """Return the config from which the family's ``build`` function rebuilds this adapter."""
        return dict(self.config)

    # Shared machinery ------------------------------------------------------------------------

    def run_block(self, block: nn.Module, hidden: torch.Tensor, context: Any) -> torch.Tensor:
        """Run one block on the whole batch and count it as one block forward pass."""
        self.block_calls.count += 1
        return block(hidden, context)

    def run_blocks(self, hidden: torch.Tensor, context: Any, blocks: nn.ModuleList | None = None) -> torch.Tensor:
        for block in self.blocks if blocks is None else blocks:
            hidden = self.run_block(block, hidden, context)
        return hidden

    def hidden_states(self, tokens: torch.Tensor, *condition: Any) -> list[torch.Tensor]:
        """Return the residual stream after every block, each ``[B, L, D]`` (for layer analysis)."""
        hidden, context = self.embed(tokens, *condition)
        states = []
        for block in self.blocks:
            hidden = self.run_block(block, hidden, context)
            states.append(hidden)
        return states

    def select_context(self, context: Any, index: torch.Tensor) -> Any:
        """Return the context of the samples ``index`` ``[n]`` of the batch, or None when it cannot be subset.

        The fixed-point solver uses it to run the shared block on the unfinished samples only. A
        family supports it by giving its context a ``select(index)`` method.
        """
        select = getattr(context, "select", None)
        return select(index) if callable(select) else None

    def position_weights(self, token_weights: torch.Tensor, num_positions: int) -> torch.Tensor:
        """Map per-token warm-start weights ``[B, L]`` to the ``num_positions`` positions of the hidden state: ``[B, P]``.

        The default is for families whose hidden state has one position per token. Families that
        add positions (class or register tokens) override it.

        Raises:
            ValueError: when the hidden state has another number of positions than there are tokens.
        """
        if token_weights.shape[1] != num_positions:
            raise ValueError(f"{token_weights.shape[1]} token weights for a hidden state of {num_positions} positions; the {self.family} adapter must override position_weights")
        return token_weights

    def num_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters())

    def cost_per_step(self) -> int:
        """Block forward passes of one denoising step."""
        return self.num_blocks
