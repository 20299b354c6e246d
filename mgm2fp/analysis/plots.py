"""Figures of the layer analysis: the CKA heatmap and the consecutive-block CKA profile.

Drawn with matplotlib's object-oriented API on the Agg canvas, so no display and no global
pyplot state are involved.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

ANNOTATE_MAX_BLOCKS = 16  # write the value in each cell up to this many blocks


def plot_cka_heatmap(cka: torch.Tensor, path: str | Path, *, boundary: int | None = None, title: str = "Linear CKA between block outputs") -> Path:
    """Save the ``[n, n]`` CKA matrix as a heatmap PNG at ``path``; a dashed line marks ``boundary``."""
    matrix = torch.as_tensor(cka, dtype=torch.float64).cpu().numpy()
    n = matrix.shape[0]
    size = max(4.0, 0.45 * n + 2.0)
    figure = Figure(figsize=(size + 1.0, size))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", origin="upper")
    figure.colorbar(image, ax=axes, label="CKA")
    axes.set_xticks(range(n))
    axes.set_yticks(range(n))
    axes.set_xlabel("block (0-indexed)")
    axes.set_ylabel("block (0-indexed)")
    axes.set_title(title)
    if n <= ANNOTATE_MAX_BLOCKS:
        for i in range(n):
            for j in range(n):
                colour = "black" if matrix[i, j] > 0.6 else "white"
                axes.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7, color=colour)
    if boundary is not None:
        for draw in (axes.axhline, axes.axvline):
            draw(boundary - 0.5, color="red", linestyle="--", linewidth=1.2)
    return _save(figure, path)


def plot_consecutive_cka(per_level: torch.Tensor, timesteps: list[float], path: str | Path, *, boundary: int | None = None) -> Path:
    """Save ``CKA(k, k + 1)`` against ``k`` as a PNG: one thin line per noise level and their mean in bold.

    ``per_level`` is ``[num_levels, n, n]``; a dashed line marks the pair that straddles ``boundary``.
    """
    levels = torch.as_tensor(per_level, dtype=torch.float64).cpu()
    consecutive = levels.diagonal(offset=1, dim1=1, dim2=2)  # [num_levels, n - 1]
    pairs = list(range(consecutive.shape[1]))
    figure = Figure(figsize=(max(5.0, 0.5 * len(pairs) + 2.0), 4.0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for level, values in zip(timesteps, consecutive):
        axes.plot(pairs, values.numpy(), linewidth=0.8, alpha=0.6, marker=".", label=f"t = {level:g}")
    axes.plot(pairs, consecutive.mean(dim=0).numpy(), color="black", linewidth=2.0, marker="o", label="mean over t")
    if boundary is not None:
        axes.axvline(boundary - 1, color="red", linestyle="--", linewidth=1.2, label=f"boundary {boundary - 1} | {boundary}")
    axes.set_xticks(pairs)
    axes.set_xticklabels([f"{k}-{k + 1}" for k in pairs], rotation=45 if len(pairs) > 12 else 0)
    axes.set_xlabel("consecutive blocks (0-indexed)")
    axes.set_ylabel("CKA")
    axes.set_ylim(0.0, 1.05)
    axes.set_title("CKA between consecutive blocks")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower left")
    return _save(figure, path)


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    logger.info("wrote %s", path)
    return path
