"""The 8x8 digits of scikit-learn as a tiny class-conditional image-token task, shared by the digits scripts.

``sklearn.datasets.load_digits`` ships 1797 grey images of 8 x 8 pixels with values 0..16 and
their classes 0..9. Every pixel becomes one token: its grey value, with 16 merged into 15, so the
codebook has 16 codes and the mask token is code 16 (the Halton-MaskGIT convention: mask id =
codebook size). A token grid is 8 x 8 = 64 tokens. The split is fixed (seed 0, 20% held out,
stratified by class), so every script uses the same training and test images.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RUNS = Path("/work/runs/digits")
GRID = 8
CODEBOOK_SIZE = 16
MASK_ID = CODEBOOK_SIZE
NUM_CLASSES = 10
SOURCE_FILE = "digits_halton_h128_d8.pth"
# The Halton-MaskGIT-shaped source model: hidden 128, 8 blocks, 4 heads, one register token.
SOURCE_CONFIG: dict[str, Any] = {
    "model_type": "halton-maskgit",
    "input_size": GRID,
    "hidden_dim": 128,
    "codebook_size": CODEBOOK_SIZE,
    "nclass": NUM_CLASSES,
    "depth": 8,
    "heads": 4,
    "ffn_dim": 256,
    "register": 1,
}


@dataclass
class DigitsSplit:
    """Token grids ``[N, 64]`` (codes 0..15) and classes ``[N]`` of the training and test images."""

    train_codes: torch.Tensor
    train_labels: torch.Tensor
    test_codes: torch.Tensor
    test_labels: torch.Tensor


def load_split(seed: int = 0, test_fraction: float = 0.2) -> DigitsSplit:
    """Load the digits and split them into training and test sets, stratified by class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    codes = torch.as_tensor(digits.data, dtype=torch.long).clamp(max=CODEBOOK_SIZE - 1)  # [1797, 64]
    labels = torch.as_tensor(digits.target, dtype=torch.long)  # [1797]
    train_index, test_index = train_test_split(range(len(labels)), test_size=test_fraction, random_state=seed, stratify=digits.target)
    train_index, test_index = torch.as_tensor(train_index), torch.as_tensor(test_index)
    return DigitsSplit(codes[train_index], labels[train_index], codes[test_index], labels[test_index])


def codes_to_images(codes: torch.Tensor) -> torch.Tensor:
    """Turn token grids ``[N, 64]`` into grey images ``[N, 1, 8, 8]`` in [0, 1]."""
    return (codes.float() / (CODEBOOK_SIZE - 1)).clamp(0, 1).view(-1, 1, GRID, GRID)


def save_release(model: torch.nn.Module, folder: Path, *, steps: int) -> Path:
    """Save a trained adapter as a Halton-MaskGIT trainer checkpoint, so that ``mgm2fp.load`` reads it like a release.

    The release keys are ``transformer.layers.{i}.*`` for the blocks, ``head.weight`` (tied to
    ``tok_emb.weight``) and ``head.bias``. The number of heads goes to ``upstream_arguments.json``
    beside the file, because the release layout does not store it.
    """
    state = {}
    for key, tensor in model.state_dict().items():
        if key == "output_bias":
            state["head.bias"] = tensor.clone()
            continue
        state[re.sub(r"^blocks\.", "transformer.layers.", key)] = tensor.clone()
    state["head.weight"] = state["tok_emb.weight"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SOURCE_FILE
    temporary = path.with_suffix(".tmp")
    torch.save({"iter": steps, "model_state_dict": state}, temporary)
    temporary.replace(path)
    arguments = {key: SOURCE_CONFIG[key] for key in ("input_size", "hidden_dim", "codebook_size", "nclass", "depth", "heads")}
    (folder / "upstream_arguments.json").write_text(json.dumps(arguments, indent=2) + "\n")
    return path
