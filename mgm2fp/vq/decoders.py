"""Decoder paths of the VQ image tokenizers that the MaskGIT releases were trained with.

Only what turns tokens into pixels is implemented: the codebook lookup, ``post_quant_conv`` and
the convolutional decoder. Two layouts are supported, each built with the release's own
parameter names so that its weights load without renaming:

- ``llamagen``: LlamaGen's ``VQModel`` (``vq_ds16_c2i``, used by Halton-MaskGIT): codebook
  16384 x 8 with L2-normalised entries, decoder levels in ``decoder.conv_blocks`` from the
  lowest resolution up, mid blocks ``decoder.mid.{0,1,2}``.
- ``taming``: the taming-transformers ``VQModel`` (ImageNet f16 with 1024 codes, used by
  MaskGIT-pytorch v1): codebook 1024 x 256 without normalisation, levels in
  ``decoder.up.{level}`` with level 0 at full resolution, mid blocks
  ``decoder.mid.{block_1,attn_1,block_2}``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mgm2fp.errors import ConfigError
from mgm2fp.vq.layers import AttnBlock, DecoderLevel, ResnetBlock, group_norm

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VQDecoderConfig:
    """Sizes of a VQ decoder. Level 0 is the full output resolution; each level above halves it."""

    codebook_size: int
    embed_dim: int
    z_channels: int = 256
    channels: int = 128
    channel_multipliers: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (4,)
    l2_normalize_codebook: bool = False
    out_channels: int = 3
    dropout: float = 0.0

    @property
    def num_levels(self) -> int:
        return len(self.channel_multipliers)

    @property
    def downsampling_factor(self) -> int:
        """Output pixels per token along each side (16 for the f16 tokenizers)."""
        return 2 ** (self.num_levels - 1)

    def level_channels(self, level: int) -> int:
        return self.channels * self.channel_multipliers[level]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CodebookLookup(nn.Module):
    """The quantizer's codebook ``embedding`` [K, e]; only the lookup of given codes is implemented."""

    def __init__(self, codebook_size: int, embed_dim: int, l2_normalize: bool) -> None:
        super().__init__()
        self.l2_normalize = l2_normalize
        self.embedding = nn.Embedding(codebook_size, embed_dim)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Map codes ``[B, h, w]`` to latents ``[B, e, h, w]``."""
        table = self.embedding.weight
        if self.l2_normalize:
            table = F.normalize(table, p=2, dim=-1)
        return table[codes].permute(0, 3, 1, 2).contiguous()


class VQDecoder(nn.Module):
    """Token codes to images: codebook lookup, ``post_quant_conv``, then the convolutional ``decoder``.

    ``forward`` returns the raw decoder output ``[B, 3, H, W]`` (about [-1, 1]);
    :meth:`decode` maps it to [0, 1] as the releases do for saving images.
    """

    kind: ClassVar[str] = ""

    def __init__(self, config: VQDecoderConfig) -> None:
        super().__init__()
        if config.channels % 32 or any((config.channels * multiplier) % 32 for multiplier in config.channel_multipliers):
            raise ConfigError(f"VQ decoder channels {config.channels} x {list(config.channel_multipliers)} must be multiples of 32 (GroupNorm with 32 groups)")
        self.config = config
        self.quantize = CodebookLookup(config.codebook_size, config.embed_dim, config.l2_normalize_codebook)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, kernel_size=1)
        self.decoder = self.build_decoder(config)

    def build_decoder(self, config: VQDecoderConfig) -> nn.Module:
        raise NotImplementedError

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Decode codes ``[B, g, g]`` (or ``[B, g * g]`` for a square grid) to images ``[B, 3, 16 g, 16 g]`` for f16."""
        if codes.ndim == 2:
            side = int(round(codes.shape[1] ** 0.5))
            if side * side != codes.shape[1]:
                raise ConfigError(f"{codes.shape[1]} codes per image do not form a square grid; pass codes as [B, height, width]")
            codes = codes.reshape(codes.shape[0], side, side)
        if codes.min() < 0 or codes.max() >= self.config.codebook_size:
            raise ConfigError(f"codes must lie in 0..{self.config.codebook_size - 1} (found {int(codes.min())}..{int(codes.max())}); decode finished samples without mask tokens")
        latents = self.post_quant_conv(self.quantize(codes.long()))  # [B, z, g, g]
        return self.decoder(latents)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Decode codes to images in [0, 1]: ``(clamp(x, -1, 1) + 1) / 2``, ``[B, 3, H, W]`` float32."""
        images = self.forward(codes).float()
        return (images.clamp(-1.0, 1.0) + 1.0) / 2.0


class _DecoderBody(nn.Module):
    """Shared forward pass: ``conv_in``, mid blocks, the levels from low to high resolution, output conv."""

    def __init__(self, config: VQDecoderConfig) -> None:
        super().__init__()
        lowest = config.num_levels - 1
        self.conv_in = nn.Conv2d(config.z_channels, config.level_channels(lowest), kernel_size=3, padding=1)
        self.norm_out = group_norm(config.level_channels(0))
        self.conv_out = nn.Conv2d(config.level_channels(0), config.out_channels, kernel_size=3, padding=1)

    def make_levels(self, config: VQDecoderConfig, blocks_name: str) -> dict[int, DecoderLevel]:
        """Build one :class:`DecoderLevel` per resolution, keyed by level (0 = full resolution)."""
        levels = {}
        in_channels = config.level_channels(config.num_levels - 1)
        for level in reversed(range(config.num_levels)):
            out_channels = config.level_channels(level)
            levels[level] = DecoderLevel(
                in_channels,
                out_channels,
                num_blocks=config.num_res_blocks + 1,
                attention=level in config.attention_levels,
                upsample=level != 0,
                blocks_name=blocks_name,
                dropout=config.dropout,
            )
            in_channels = out_channels
        return levels

    def mid_blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def levels_low_to_high(self) -> list[nn.Module]:
        raise NotImplementedError

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        hidden = self.conv_in(latents)  # [B, C_low, g, g]
        for module in self.mid_blocks():
            hidden = module(hidden)
        for level in self.levels_low_to_high():
            hidden = level(hidden)
        return self.conv_out(F.silu(self.norm_out(hidden)))  # [B, 3, H, W]


class _LlamaGenDecoderBody(_DecoderBody):
    def __init__(self, config: VQDecoderConfig) -> None:
        super().__init__(config)
        channels = config.level_channels(config.num_levels - 1)
        self.mid = nn.ModuleList([ResnetBlock(channels, channels, config.dropout), AttnBlock(channels), ResnetBlock(channels, channels, config.dropout)])
        levels = self.make_levels(config, "res")
        self.conv_blocks = nn.ModuleList(levels[level] for level in reversed(range(config.num_levels)))

    def mid_blocks(self) -> list[nn.Module]:
        return list(self.mid)

    def levels_low_to_high(self) -> list[nn.Module]:
        return list(self.conv_blocks)


class _TamingDecoderBody(_DecoderBody):
    def __init__(self, config: VQDecoderConfig) -> None:
        super().__init__(config)
        channels = config.level_channels(config.num_levels - 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(channels, channels, config.dropout)
        self.mid.attn_1 = AttnBlock(channels)
        self.mid.block_2 = ResnetBlock(channels, channels, config.dropout)
        levels = self.make_levels(config, "block")
        self.up = nn.ModuleList(levels[level] for level in range(config.num_levels))

    def mid_blocks(self) -> list[nn.Module]:
        return [self.mid.block_1, self.mid.attn_1, self.mid.block_2]

    def levels_low_to_high(self) -> list[nn.Module]:
        return list(reversed(self.up))


class LlamaGenVQDecoder(VQDecoder):
    """Decoder path of LlamaGen's ``VQModel`` (``vq_ds16_c2i`` by default)."""

    kind = "llamagen"

    def build_decoder(self, config: VQDecoderConfig) -> nn.Module:
        return _LlamaGenDecoderBody(config)


class TamingVQGANDecoder(VQDecoder):
    """Decoder path of the taming-transformers ``VQModel`` (ImageNet f16, 1024 codes, by default)."""

    kind = "taming"

    def build_decoder(self, config: VQDecoderConfig) -> nn.Module:
        return _TamingDecoderBody(config)


# Released configurations.
LLAMAGEN_VQ_DS16_C2I = VQDecoderConfig(codebook_size=16384, embed_dim=8, attention_levels=(4,), l2_normalize_codebook=True)
TAMING_VQGAN_F16_1024 = VQDecoderConfig(codebook_size=1024, embed_dim=256, attention_levels=(4,), l2_normalize_codebook=False)

VQ_DECODERS: dict[str, type[VQDecoder]] = {"llamagen": LlamaGenVQDecoder, "taming": TamingVQGANDecoder}
# Whether each layout L2-normalises its codebook, which the weights do not record.
L2_NORMALIZED = {"llamagen": True, "taming": False}
