"""Linear centred kernel alignment (CKA) between the residual streams of transformer blocks.

``CKA(X, Y) = ||X^T Y||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on column-centred token-feature matrices
``X`` ``[T, D]`` (batch and sequence flattened into T tokens), as in the layer analysis of
arXiv 2605.31215 (Kornblith et al., arXiv 1905.00414, define linear CKA).

Two estimators give the same matrix without keeping every activation:

- :class:`StreamingCKA` accumulates, per block, the feature sum and, per pair of blocks, the
  cross-product ``X_i^T X_j``. It reads every token, and its memory does not grow with the data:
  ``(n (n + 1) / 2 * D^2 + n * D) * 8`` bytes in float64 for ``n`` blocks of width ``D``.
- :class:`SampledCKA` stores the tokens it is given (the caller subsamples them) in float32 and
  computes CKA at the end. Its memory grows with the sample, not with ``D^2``, which suits wide
  models analysed on a token subsample.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import torch

logger = logging.getLogger(__name__)


class CKAEstimator(Protocol):
    """Accumulates token features of ``n`` blocks batch by batch and returns their CKA matrix."""

    num_tokens: int

    def update(self, features: Sequence[torch.Tensor]) -> None:
        """Add one batch: one ``[T, D]`` token-feature matrix per block, the same T tokens each."""

    def cka_matrix(self) -> torch.Tensor:
        """Return the ``[n, n]`` float64 CKA matrix of everything added so far."""


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Return the linear CKA of two token-feature matrices ``x`` ``[T, D1]`` and ``y`` ``[T, D2]``.

    Computed directly in float64 after centring each column. The result is a 0-dim tensor in
    ``[0, 1]``, or NaN when either matrix is constant over the tokens.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs two [T, D] matrices with the same T; got {tuple(x.shape)} and {tuple(y.shape)}")
    x = x.double() - x.double().mean(dim=0, keepdim=True)  # [T, D1]
    y = y.double() - y.double().mean(dim=0, keepdim=True)  # [T, D2]
    cross = torch.linalg.matrix_norm(x.T @ y) ** 2  # ||X^T Y||_F^2
    return cross / (torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y))


def cka_from_hsic(hsic: torch.Tensor) -> torch.Tensor:
    """Normalise ``hsic[i, j] = ||X_i^T X_j||_F^2`` ``[n, n]`` into the CKA matrix (NaN for constant blocks)."""
    norms = hsic.diagonal().sqrt()  # ||X_i^T X_i||_F
    return hsic / (norms[:, None] * norms[None, :])


def streaming_memory_bytes(num_blocks: int, dim: int) -> int:
    """Bytes that :class:`StreamingCKA` keeps: every pair's ``D x D`` cross-product and every block's sum, in float64."""
    pairs = num_blocks * (num_blocks + 1) // 2
    return (pairs * dim * dim + num_blocks * dim) * 8


def sampled_memory_bytes(num_blocks: int, dim: int, num_tokens: int) -> int:
    """Bytes that :class:`SampledCKA` keeps for ``num_tokens`` tokens (float32), plus its float64 work space at the end.

    The work space is the ``n`` token kernels ``[T, T]`` when ``T <= D``, else two centred blocks
    ``[T, D]`` and one ``D x D`` product.
    """
    stored = num_blocks * num_tokens * dim * 4
    if num_tokens <= dim:
        work = num_blocks * num_tokens * num_tokens * 8
    else:
        work = (2 * num_tokens * dim + dim * dim) * 8
    return stored + work


class StreamingCKA:
    """Exact CKA over every token seen, from running sums and cross-products (bounded memory).

    For blocks ``i`` and ``j`` the centred cross-product is
    ``C_ij = S_ij - s_i s_j^T / N`` with ``S_ij = sum_t x_i(t) x_j(t)^T`` and ``s_i = sum_t x_i(t)``,
    and ``hsic[i, j] = ||C_ij||_F^2``. Features are shifted by the first batch's mean before they
    are accumulated: covariances do not change under a constant shift, and the shift keeps the
    subtraction above from cancelling the digits of large mean activations.

    ``matmul_dtype`` sets the precision of each batch's products (float64 by default; float32 is
    faster on GPUs with slow float64). The running sums are float64 either way.
    """

    def __init__(self, num_blocks: int, dim: int, *, device: torch.device | str = "cpu", matmul_dtype: torch.dtype = torch.float64) -> None:
        self.num_blocks = num_blocks
        self.dim = dim
        self.device = torch.device(device)
        self.matmul_dtype = matmul_dtype
        self.num_tokens = 0
        self.pairs = [(i, j) for i in range(num_blocks) for j in range(i, num_blocks)]
        self.shift: torch.Tensor | None = None  # [n, D]
        self.sums = torch.zeros(num_blocks, dim, dtype=torch.float64, device=self.device)  # [n, D]
        self.products = torch.zeros(len(self.pairs), dim, dim, dtype=torch.float64, device=self.device)  # [P, D, D]

    @property
    def memory_bytes(self) -> int:
        return streaming_memory_bytes(self.num_blocks, self.dim)

    def update(self, features: Sequence[torch.Tensor]) -> None:
        """Add one batch: one ``[T, D]`` token-feature matrix per block."""
        _check_features(features, self.num_blocks, self.dim)
        if self.shift is None:
            self.shift = torch.stack([block.double().mean(dim=0) for block in features]).to(self.device)  # [n, D]
        shifted = [(block.to(self.device, torch.float64) - self.shift[index]).to(self.matmul_dtype) for index, block in enumerate(features)]  # n x [T, D]
        for index, block in enumerate(shifted):
            self.sums[index] += block.sum(dim=0, dtype=torch.float64)
        for pair, (i, j) in enumerate(self.pairs):
            self.products[pair] += (shifted[i].T @ shifted[j]).double()  # S_ij += X_i^T X_j
        self.num_tokens += features[0].shape[0]

    def hsic_matrix(self) -> torch.Tensor:
        """Return ``||C_ij||_F^2`` ``[n, n]`` for the centred cross-products."""
        if self.num_tokens < 2:
            raise ValueError(f"CKA needs at least 2 tokens; {self.num_tokens} were added")
        hsic = torch.zeros(self.num_blocks, self.num_blocks, dtype=torch.float64, device=self.device)
        for pair, (i, j) in enumerate(self.pairs):
            centred = self.products[pair] - torch.outer(self.sums[i], self.sums[j]) / self.num_tokens  # C_ij [D, D]
            hsic[i, j] = hsic[j, i] = torch.linalg.matrix_norm(centred) ** 2
        return hsic

    def cka_matrix(self) -> torch.Tensor:
        return cka_from_hsic(self.hsic_matrix()).cpu()


class SampledCKA:
    """CKA of the tokens added, computed at the end from the stored features.

    The features are kept in float32 (``n * T * 4 * D`` bytes for ``T`` tokens). At the end each
    block is centred in float64. With fewer tokens than features, the token kernels
    ``K_i = X_i X_i^T`` ``[T, T]`` are formed, because ``||X_i^T X_j||_F^2 = <K_i, K_j>``.
    Otherwise the ``D x D`` cross-products are formed one pair at a time.
    """

    def __init__(self, num_blocks: int, dim: int, *, device: torch.device | str = "cpu") -> None:
        self.num_blocks = num_blocks
        self.dim = dim
        self.device = torch.device(device)
        self.num_tokens = 0
        self.batches: list[list[torch.Tensor]] = [[] for _ in range(num_blocks)]

    @property
    def memory_bytes(self) -> int:
        return sampled_memory_bytes(self.num_blocks, self.dim, self.num_tokens)

    def update(self, features: Sequence[torch.Tensor]) -> None:
        """Add one batch: one ``[T, D]`` token-feature matrix per block."""
        _check_features(features, self.num_blocks, self.dim)
        for index, block in enumerate(features):
            self.batches[index].append(block.detach().to(self.device, torch.float32))
        self.num_tokens += features[0].shape[0]

    def _centred(self, index: int) -> torch.Tensor:
        block = torch.cat(self.batches[index]).double()  # [T, D]
        return block - block.mean(dim=0, keepdim=True)

    def hsic_matrix(self) -> torch.Tensor:
        """Return ``||X_i^T X_j||_F^2`` ``[n, n]`` for the centred stored features."""
        if self.num_tokens < 2:
            raise ValueError(f"CKA needs at least 2 tokens; {self.num_tokens} were added")
        n = self.num_blocks
        hsic = torch.zeros(n, n, dtype=torch.float64, device=self.device)
        if self.num_tokens <= self.dim:
            kernels = torch.empty(n, self.num_tokens * self.num_tokens, dtype=torch.float64, device=self.device)  # [n, T * T]
            for index in range(n):
                centred = self._centred(index)
                kernels[index] = (centred @ centred.T).flatten()  # K_i
            return kernels @ kernels.T
        for i in range(n):
            x_i = self._centred(i)
            for j in range(i, n):
                x_j = x_i if j == i else self._centred(j)
                hsic[i, j] = hsic[j, i] = torch.linalg.matrix_norm(x_i.T @ x_j) ** 2
        return hsic

    def cka_matrix(self) -> torch.Tensor:
        return cka_from_hsic(self.hsic_matrix()).cpu()


def _check_features(features: Sequence[torch.Tensor], num_blocks: int, dim: int) -> None:
    if len(features) != num_blocks:
        raise ValueError(f"expected features of {num_blocks} blocks, got {len(features)}")
    num_tokens = features[0].shape[0]
    for block in features:
        if block.ndim != 2 or block.shape != (num_tokens, dim):
            raise ValueError(f"every block's features must be [T, {dim}] with the same T; got {tuple(block.shape)} next to T = {num_tokens}")
