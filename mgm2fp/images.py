"""Image helpers: decode MaskGIT token grids with a VQ decoder and write PNG grids."""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from mgm2fp.errors import ConfigError
from mgm2fp.vq.decoders import VQDecoder

logger = logging.getLogger(__name__)


def image_tokenizer_kind(model: Any) -> str | None:
    """Return the VQ tokenizer layout an image model was trained with (``llamagen``, ``taming``), or None for text models.

    For a fixed-point model, this is its source model's layout.
    """
    source = getattr(model, "base", model)
    return getattr(source, "image_tokenizer", None)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Convert images ``[N, C, H, W]`` in [0, 1] (float) or [0, 255] (uint8) to uint8, rounding floats."""
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ConfigError(f"images must be float in [0, 1] or uint8, not {images.dtype}")
    return (images.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def make_grid(images: torch.Tensor, *, nrow: int | None = None, padding: int = 2, pad_value: int = 255) -> torch.Tensor:
    """Tile images ``[N, C, H, W]`` into one uint8 image ``[C, rows * (H + p) + p, nrow * (W + p) + p]``.

    ``nrow`` is the number of images per row (default: about the square root of N).
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ConfigError(f"expected a non-empty batch of images [N, C, H, W], got shape {list(images.shape)}")
    images = to_uint8(images).cpu()
    count, channels, height, width = images.shape
    nrow = nrow or math.ceil(math.sqrt(count))
    rows = math.ceil(count / nrow)
    grid = torch.full((channels, rows * (height + padding) + padding, nrow * (width + padding) + padding), pad_value, dtype=torch.uint8)
    for index in range(count):
        row, column = divmod(index, nrow)
        top = padding + row * (height + padding)
        left = padding + column * (width + padding)
        grid[:, top : top + height, left : left + width] = images[index]
    return grid


def save_image_grid(images: torch.Tensor, path: str | Path, *, nrow: int | None = None, padding: int = 2) -> Path:
    """Write images ``[N, C, H, W]`` (float in [0, 1] or uint8; C = 1 or 3) as one PNG grid, atomically.

    Returns the path written.

    Raises:
        ConfigError: for an empty batch, a bad shape or an unsupported number of channels.
    """
    from PIL import Image

    grid = make_grid(images, nrow=nrow, padding=padding)
    channels = grid.shape[0]
    if channels not in (1, 3):
        raise ConfigError(f"images have {channels} channels; PNG grids take 1 (grey) or 3 (RGB)")
    array = grid.permute(1, 2, 0).numpy()  # [H, W, C]
    picture = Image.fromarray(array[..., 0] if channels == 1 else array, mode="L" if channels == 1 else "RGB")

    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".png", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            picture.save(file, format="PNG")
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.info("wrote %d images to %s", images.shape[0], target)
    return target


def read_token_grids(path: str | Path, *, key: str = "codes") -> torch.Tensor:
    """Read token grids ``[N, g, g]`` (or ``[N, g * g]``) stored under ``key`` in a .safetensors or weights-only .pt file.

    Raises:
        ConfigError: when the file lacks ``key`` or the tensor is not integer codes.
        CheckpointError: for a .pt file whose pickle would run code.
    """
    from safetensors.torch import load_file

    from mgm2fp.pth_weights import load_weights_only

    path = Path(path)
    content = load_file(str(path)) if path.suffix == ".safetensors" else load_weights_only(path)
    if torch.is_tensor(content):
        codes = content
    elif isinstance(content, dict) and key in content and torch.is_tensor(content[key]):
        codes = content[key]
    else:
        found = ", ".join(sorted(map(str, content))) if isinstance(content, dict) else type(content).__name__
        raise ConfigError(f"'{path}' has no tensor '{key}' (found: {found}); pass --key with the name of the token tensor")
    if codes.is_floating_point() or codes.ndim not in (2, 3):
        raise ConfigError(f"tokens in '{path}' must be integer codes [N, g, g] or [N, g * g], got {codes.dtype} {list(codes.shape)}")
    return codes.long()


@torch.no_grad()
def decode_tokens(decoder: VQDecoder, codes: torch.Tensor, *, batch_size: int = 16) -> torch.Tensor:
    """Decode token grids ``[N, g, g]`` (or ``[N, g * g]``) to images ``[N, 3, H, W]`` in [0, 1], in batches.

    Raises:
        ConfigError: when codes fall outside the codebook (for example unfinished mask tokens).
    """
    device = next(decoder.parameters()).device
    outputs = [decoder.decode(chunk.to(device)).cpu() for chunk in codes.split(batch_size)]
    return torch.cat(outputs)
