"""Draw tokens from logits in float64, with optional nucleus (top-p) filtering.

Logits are cast to float64 before the softmax because sampling from low-precision probabilities
inflates the apparent quality of the samples (arXiv 2605.31215 makes the same cast).
"""

from __future__ import annotations

import torch

from mgm2fp.errors import ConfigError

# Maximum float64 elements per sampling chunk: 2**27 elements take 1 GiB.
CHUNK_ELEMENTS = 2**27


def top_p_filter(probabilities: torch.Tensor, top_p: float) -> torch.Tensor:
    """Return ``probabilities`` ``[n, V]`` restricted to the most likely tokens whose mass first reaches ``top_p``, renormalised."""
    if not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p={top_p} is invalid; use a probability mass in (0, 1]")
    if top_p >= 1.0:
        return probabilities
    sorted_probabilities, order = probabilities.sort(dim=-1, descending=True)  # [n, V]
    mass_before = sorted_probabilities.cumsum(dim=-1) - sorted_probabilities  # [n, V]
    # A token is kept when the more likely tokens have a total mass below top_p, so the most likely
    # token is always kept.
    keep_sorted = mass_before < top_p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    filtered = torch.where(keep, probabilities, torch.zeros_like(probabilities))
    return filtered / filtered.sum(dim=-1, keepdim=True)


def sample_categorical(
    logits: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    top_p: float | None = None,
    banned_token_id: int | None = None,
) -> torch.Tensor:
    """Draw one token per row of ``logits`` ``[n, V]`` and return the ids ``[n]``.

    The softmax runs in float64. ``banned_token_id`` (the mask token) gets probability 0, as in
    MDLM's SUBS parameterisation. Rows are processed in chunks to bound the float64 memory.
    """
    if logits.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=logits.device)
    rows = max(1, CHUNK_ELEMENTS // logits.shape[-1])
    chunks = []
    for start in range(0, logits.shape[0], rows):
        chunk = logits[start : start + rows].to(torch.float64, copy=True)  # [n, V], never a view of the caller's logits
        if banned_token_id is not None:
            chunk[:, banned_token_id] = float("-inf")
        probabilities = torch.softmax(chunk, dim=-1)
        if top_p is not None:
            probabilities = top_p_filter(probabilities, top_p)
        chunks.append(torch.multinomial(probabilities, 1, generator=generator).squeeze(1))
    return torch.cat(chunks)
