"""Block-to-block similarity of a source model: linear CKA of every pair of residual streams.

For each noise level ``t``, clean sequences are noised by the family's
:class:`~mgm2fp.analysis.noising.NoisingScheme`, every block's output is read with
``model.hidden_states``, and the CKA matrix over all tokens is accumulated batch by batch. The
matrices are then averaged over the levels (arXiv 2605.31215 uses t = 0.1, 0.3, 0.5, 0.7, 0.9).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mgm2fp.analysis.cka import CKAEstimator, SampledCKA, StreamingCKA, sampled_memory_bytes, streaming_memory_bytes
from mgm2fp.analysis.noising import noising_scheme
from mgm2fp.errors import ConfigError
from mgm2fp.families.base import MaskedGenerativeModel
from mgm2fp.fixed_point.model import FixedPointMGM

logger = logging.getLogger(__name__)

DEFAULT_TIMESTEPS = (0.1, 0.3, 0.5, 0.7, 0.9)  # noise levels of the CKA analysis in arXiv 2605.31215
ESTIMATORS = ("auto", "streaming", "sampled")


@dataclass
class LayerSimilarity:
    """CKA matrices of one analysis run; block indices are 0-indexed."""

    timesteps: list[float]
    per_level: torch.Tensor  # [num_levels, n, n] CKA at each noise level
    num_sequences: int
    seq_len: int
    tokens_per_level: int
    estimator: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def matrix(self) -> torch.Tensor:
        """The CKA matrix averaged over the noise levels ``[n, n]``."""
        return self.per_level.mean(dim=0)

    @property
    def num_blocks(self) -> int:
        return self.per_level.shape[-1]

    @property
    def consecutive(self) -> torch.Tensor:
        """``CKA(k, k + 1)`` for k = 0 .. n - 2, from the averaged matrix ``[n - 1]``."""
        return self.matrix.diagonal(offset=1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_blocks": self.num_blocks,
            "timesteps": list(self.timesteps),
            "cka": self.matrix.tolist(),
            "consecutive_cka": self.consecutive.tolist(),
            "cka_per_timestep": {f"{t:g}": level.tolist() for t, level in zip(self.timesteps, self.per_level)},
            "num_sequences": self.num_sequences,
            "seq_len": self.seq_len,
            "tokens_per_timestep": self.tokens_per_level,
            "estimator": self.estimator,
            **self.settings,
        }


def parse_timesteps(text: str | Sequence[float]) -> list[float]:
    """Parse ``"0.1,0.3,0.5"`` (or a list of floats) into noise levels in ``(0, 1]``.

    Raises:
        ConfigError: for an empty list, a non-number or a level outside ``(0, 1]``.
    """
    parts = [part.strip() for part in text.split(",") if part.strip()] if isinstance(text, str) else list(text)
    if not parts:
        raise ConfigError("no noise levels given; pass --timesteps as comma-separated values in (0, 1], e.g. 0.1,0.3,0.5,0.7,0.9")
    levels = []
    for part in parts:
        try:
            level = float(part)
        except ValueError as error:
            raise ConfigError(f"noise level '{part}' is not a number; pass --timesteps such as 0.1,0.3,0.5,0.7,0.9") from error
        if not 0 < level <= 1:
            raise ConfigError(f"noise level {part} is outside (0, 1]; pass values such as 0.1,0.3,0.5,0.7,0.9")
        levels.append(level)
    return levels


def analyze_layers(
    model: MaskedGenerativeModel,
    tokens: torch.Tensor,
    *,
    timesteps: Sequence[float] = DEFAULT_TIMESTEPS,
    batch_size: int = 8,
    tokens_per_sequence: int | None = None,
    estimator: str = "auto",
    matmul_dtype: torch.dtype = torch.float64,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> LayerSimilarity:
    """Compute the CKA between the outputs of every pair of blocks of ``model`` on ``tokens`` ``[N, L]``.

    ``tokens_per_sequence`` keeps that many random positions of each sequence (the same positions
    for every block) instead of all of them. ``estimator`` is ``streaming`` (exact over the tokens
    kept, ``D x D`` statistics per pair of blocks), ``sampled`` (stores the tokens kept) or
    ``auto``, which picks the one that needs less memory. ``progress(done, total)`` is called
    after every batch. The model runs in inference mode on its own device and dtype.

    Raises:
        ConfigError: for a fixed-point model, token ids outside the vocabulary, invalid options,
            or a block whose output is constant over the data.
    """
    _check_inputs(model, tokens, batch_size=batch_size, tokens_per_sequence=tokens_per_sequence, estimator=estimator)
    levels = parse_timesteps(list(timesteps))
    scheme = noising_scheme(model)
    num_sequences, seq_len = tokens.shape
    kept_per_sequence = seq_len if tokens_per_sequence is None else min(tokens_per_sequence, seq_len)
    tokens_per_level = num_sequences * kept_per_sequence
    chosen = _choose_estimator(estimator, model.num_blocks, model.hidden_size, tokens_per_level)
    device = _model_device(model)

    generator = torch.Generator().manual_seed(seed)
    batches = [tokens[start : start + batch_size] for start in range(0, num_sequences, batch_size)]
    total, done = len(levels) * len(batches), 0
    matrices = []
    was_training = model.training
    model.eval()
    try:
        for level in levels:
            accumulator = _make_estimator(chosen, model, device, matmul_dtype)
            for batch in batches:
                inputs, condition = scheme.noise_inputs(model, batch.cpu(), level, generator)
                positions = None if tokens_per_sequence is None else _sample_positions(batch.shape[0], seq_len, kept_per_sequence, generator)
                with torch.inference_mode():
                    states = model.hidden_states(_to_device(inputs, device), *_to_device(condition, device))  # n x [B, L, D]
                    accumulator.update([_token_features(state, positions) for state in states])
                done += 1
                if progress is not None:
                    progress(done, total)
            matrices.append(_finished_matrix(accumulator, level))
    finally:
        model.train(was_training)

    settings = {"batch_size": batch_size, "tokens_per_sequence": tokens_per_sequence, "seed": seed, "noising": scheme.description, "family": model.family}
    return LayerSimilarity(
        timesteps=levels,
        per_level=torch.stack(matrices),
        num_sequences=num_sequences,
        seq_len=seq_len,
        tokens_per_level=tokens_per_level,
        estimator=chosen,
        settings=settings,
    )


def _check_inputs(model: MaskedGenerativeModel, tokens: torch.Tensor, *, batch_size: int, tokens_per_sequence: int | None, estimator: str) -> None:
    if isinstance(model, FixedPointMGM):
        raise ConfigError("the model is already a fixed-point model; analyse its source checkpoint instead")
    if estimator not in ESTIMATORS:
        raise ConfigError(f"unknown CKA estimator '{estimator}'; use one of {', '.join(ESTIMATORS)}")
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} is invalid; give a positive --batch-size")
    if tokens_per_sequence is not None and tokens_per_sequence < 1:
        raise ConfigError(f"tokens per sequence {tokens_per_sequence} is invalid; give a positive --tokens-per-sequence")
    if tokens.ndim != 2 or tokens.numel() == 0:
        raise ConfigError(f"analysis tokens must be a non-empty [N, L] tensor; got shape {tuple(tokens.shape)}")
    largest = int(tokens.max())
    if largest >= model.vocab_size or int(tokens.min()) < 0:
        raise ConfigError(f"token id {largest} is outside the model's vocabulary of {model.vocab_size}; tokenise the data with the model's tokenizer")
    if (tokens == model.mask_token_id).any():
        logger.warning("the data contains the mask token id %d; those positions count as masked at every noise level", model.mask_token_id)


def _choose_estimator(estimator: str, num_blocks: int, dim: int, num_tokens: int) -> str:
    streaming = streaming_memory_bytes(num_blocks, dim)
    sampled = sampled_memory_bytes(num_blocks, dim, num_tokens)
    chosen = estimator
    if estimator == "auto":
        chosen = "streaming" if streaming <= sampled else "sampled"
    memory = streaming if chosen == "streaming" else sampled
    logger.info("CKA estimator %s: about %.2f GiB of statistics (%d blocks, width %d, %d tokens per noise level)", chosen, memory / 2**30, num_blocks, dim, num_tokens)
    return chosen


def _make_estimator(kind: str, model: MaskedGenerativeModel, device: torch.device, matmul_dtype: torch.dtype) -> CKAEstimator:
    if kind == "streaming":
        return StreamingCKA(model.num_blocks, model.hidden_size, device=device, matmul_dtype=matmul_dtype)
    return SampledCKA(model.num_blocks, model.hidden_size, device=device)


def _sample_positions(batch: int, seq_len: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """Pick ``count`` distinct random positions per sequence ``[B, count]``."""
    return torch.rand(batch, seq_len, generator=generator).argsort(dim=1)[:, :count]


def _token_features(state: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """Flatten one block's output ``[B, L, D]`` into token features ``[B * K, D]`` (float32)."""
    if positions is not None:
        index = positions.to(state.device)[..., None].expand(-1, -1, state.shape[-1])  # [B, K, D]
        state = state.gather(1, index)
    return state.reshape(-1, state.shape[-1]).float()


def _finished_matrix(accumulator: CKAEstimator, level: float) -> torch.Tensor:
    matrix = accumulator.cka_matrix()  # [n, n]
    constant = (~torch.isfinite(matrix.diagonal())).nonzero().flatten().tolist()
    if constant:
        raise ConfigError(f"block {constant[0]}'s output is constant over the data at noise level {level:g}, so CKA is undefined; use more varied data or more sequences")
    return matrix


def _model_device(model: MaskedGenerativeModel) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _to_device(value: Any, device: torch.device) -> Any:
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to_device(item, device) for item in value)
    return value
