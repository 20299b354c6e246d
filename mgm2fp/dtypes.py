"""Parse dtype names given on the command line or in configs."""

from __future__ import annotations

import torch

from mgm2fp.errors import ConfigError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """Return the torch dtype named by ``value`` (None stays None).

    Raises:
        ConfigError: for an unknown name.
    """
    if value is None or isinstance(value, torch.dtype):
        return value
    key = str(value).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ConfigError(f"unknown dtype '{value}'; use one of float32, bfloat16, float16 (or fp32, bf16, fp16)")
    return DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
