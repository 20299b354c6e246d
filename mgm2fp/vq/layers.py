"""Convolutional layers of the VQGAN decoders (taming-transformers and LlamaGen share them).

The parameter names (``norm1``, ``conv1``, ``nin_shortcut``, ``q``, ``k``, ``v``, ``proj_out``,
``upsample.conv``) are those of both releases, so their weights load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GROUP_NORM_GROUPS = 32
GROUP_NORM_EPS = 1e-6


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=GROUP_NORM_GROUPS, num_channels=channels, eps=GROUP_NORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    """``x + conv2(swish(norm2(conv1(swish(norm1(x))))))``, with a 1x1 shortcut when the channels change."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels of a feature map, with 1x1 convolutions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        normed = self.norm(x)
        # [B, C, H, W] -> [B, 1, H*W, C]: one head whose features are the channels.
        query, key, value = (conv(normed).reshape(batch, 1, channels, height * width).transpose(2, 3) for conv in (self.q, self.k, self.v))
        attention = F.scaled_dot_product_attention(query, key, value)  # [B, 1, H*W, C], scaled by 1/sqrt(C)
        attention = attention.transpose(2, 3).reshape(batch, channels, height, width)
        return x + self.proj_out(attention)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling by 2, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DecoderLevel(nn.Module):
    """The residual blocks of one resolution (each optionally followed by attention), then an upsampling.

    ``blocks_name`` is the release's name of the residual block list (``res`` in LlamaGen,
    ``block`` in taming-transformers).
    """

    def __init__(self, in_channels: int, out_channels: int, *, num_blocks: int, attention: bool, upsample: bool, blocks_name: str, dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks_name = blocks_name
        blocks = [ResnetBlock(in_channels if index == 0 else out_channels, out_channels, dropout) for index in range(num_blocks)]
        setattr(self, blocks_name, nn.ModuleList(blocks))
        self.attn = nn.ModuleList(AttnBlock(out_channels) for _ in range(num_blocks)) if attention else nn.ModuleList()
        if upsample:
            self.upsample = Upsample(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, block in enumerate(getattr(self, self.blocks_name)):
            x = block(x)
            if len(self.attn) > 0:
                x = self.attn[index](x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x
