"""Halton-MaskGIT family: the class-conditional image-token transformer of valeoai/Halton-MaskGIT.

An independent port of the released architecture (main branch, weights ``llvictorll/Halton-MaskGIT``).
Its blocks are adaLN blocks conditioned on the class embedding, with RMSNorm, attention with a
weightless RMSNorm on the full query and key vectors, and a SwiGLU feed-forward layer. Register
tokens follow the image tokens, and the output projection is tied to the token embedding.

Adapter names follow the release except ``transformer.layers`` (here ``blocks``) and the head:
the release's ``head.weight`` is the token embedding itself, so the adapter keeps only
``tok_emb.weight`` and the bias ``output_bias``, and the tie survives conversion and saving.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mgm2fp.errors import CheckpointError
from mgm2fp.families.maskgit_common import MaskGITModel, class_ids, count_blocks, detect_by_keys, flatten_codes, load_pth_model, pad_extra_positions, resolve_num_heads
from mgm2fp.families.registry import Family, register_family
from mgm2fp.hub import ResolvedSource

logger = logging.getLogger(__name__)

FAMILY = "halton-maskgit"
RMS_NORM_EPS = 1e-5
# Released sizes: name -> (hidden size, depth, heads), from the upstream README and model code.
SIZES = {"tiny": (384, 6, 6), "small": (512, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
REQUIRED_FIELDS = ("input_size", "hidden_dim", "codebook_size", "nclass", "depth", "heads", "ffn_dim")
RELEASE_BLOCK_KEY = re.compile(r"^transformer\.layers\.(\d+)\.")
DETECTION_KEYS = ("cls_emb.weight", "tok_emb.weight", "pos_emb.weight", "last_norm.norm_final.weight", "transformer.layers.0.attn.wq.weight")


def rms_norm(x: torch.Tensor, eps: float = RMS_NORM_EPS) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps)`` over the last dimension, computed in float32."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x * (1 + scale) + shift`` with per-sample ``shift`` and ``scale`` ``[B, D]``."""
    return x * (1 + scale[:, None]) + shift[:, None]


class RMSNorm(nn.Module):
    """RMSNorm with a weight and, optionally, a bias (the final norm has one)."""

    def __init__(self, dim: int, *, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.weight * rms_norm(x)
        return out if self.bias is None else out + self.bias


@dataclass
class HaltonContext:
    """Conditioning that every block and the head read besides the hidden state."""

    condition: torch.Tensor  # [B, D] class embedding (the "no class" row for dropped labels)
    num_image_tokens: int  # grid * grid; register tokens follow them

    def select(self, index: torch.Tensor) -> "HaltonContext":
        """Return the context of the samples ``index`` ``[n]`` (the solver's per-sample early stop uses it)."""
        return HaltonContext(condition=self.condition.index_select(0, index), num_image_tokens=self.num_image_tokens)


class Attention(nn.Module):
    """Bidirectional attention with a weightless RMSNorm on the full query and key vectors."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        head_dim = dim // self.heads
        value = self.wv(x)
        # The norm runs before the heads are split, over all D features.
        query = rms_norm(self.wq(x)).to(value.dtype)
        key = rms_norm(self.wk(x)).to(value.dtype)
        query, key, value = (t.view(batch, length, self.heads, head_dim).transpose(1, 2) for t in (query, key, value))  # [B, H, L, d]
        dropout = self.dropout if self.training else 0.0
        attention = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout)  # [B, H, L, d]
        out = self.wo(attention.transpose(1, 2).reshape(batch, length, dim))
        return F.dropout(out, self.dropout, self.training)


class SwiGLU(nn.Module):
    """``w2(SiLU(w1 x) * w3 x)`` without biases."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = dropout
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated = F.silu(self.w1(x)) * self.w3(x)  # [B, L, hidden]
        return self.w2(F.dropout(gated, self.dropout, self.training))


class HaltonBlock(nn.Module):
    """One adaLN block, called as ``block(h, context)``.

    ``mlp`` (SiLU, then Linear) maps the class embedding to six chunks, in order shift, scale
    and gate of the attention branch, then the same for the feed-forward branch:
    ``x + gate * branch(modulate(norm(x), shift, scale))``.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.ln1 = RMSNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.ln2 = RMSNorm(dim)
        self.ff = SwiGLU(dim, ffn_dim, dropout)
        nn.init.zeros_(self.mlp[1].weight)
        nn.init.zeros_(self.mlp[1].bias)

    def forward(self, x: torch.Tensor, context: HaltonContext) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.mlp(context.condition).chunk(6, dim=1)  # each [B, D]
        x = x + gate1[:, None] * self.attn(modulate(self.ln1(x), shift1, scale1))
        return x + gate2[:, None] * self.ff(modulate(self.ln2(x), shift2, scale2))


class AdaptiveFinalNorm(nn.Module):
    """The release's ``last_norm``: RMSNorm with bias, then a class-conditioned shift and scale."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm_final = RMSNorm(dim, bias=True)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        shift, scale = self.mlp(condition).chunk(2, dim=1)  # each [B, D]
        return modulate(self.norm_final(x), shift, scale)


class HaltonMaskGIT(MaskGITModel):
    """Halton-MaskGIT: ``forward(codes, labels, drop_label)`` returns logits ``[B, grid * grid, codebook + 1]``.

    ``codes`` are ``[B, grid, grid]`` or ``[B, grid * grid]``, with the mask id ``codebook_size``
    at masked cells. ``labels`` are class ids ``[B]`` (None for unconditional). ``drop_label``
    (bool ``[B]``) replaces a label by the "no class" id ``nclass``.
    """

    family = FAMILY
    condition_names = ("labels", "drop_label")
    # The tokenizer the release was trained with (a key of mgm2fp.vq.VQ_DECODERS).
    image_tokenizer = "llamagen"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        missing = [name for name in REQUIRED_FIELDS if name not in config]
        if missing:
            raise CheckpointError(f"Halton-MaskGIT config lacks {', '.join(missing)}; rebuild it from the release with mgm2fp.load")
        dim, heads = int(config["hidden_dim"]), int(config["heads"])
        if dim % heads:
            raise CheckpointError(f"hidden_dim {dim} is not divisible by heads {heads}; pass a num_heads that divides it")
        self.cls_emb = nn.Embedding(int(config["nclass"]) + 1, dim)
        self.tok_emb = nn.Embedding(int(config["codebook_size"]) + 1, dim)
        self.pos_emb = nn.Embedding(self.num_image_tokens, dim)
        self.reg_tokens = nn.Embedding(int(config.get("register", 0)), dim) if int(config.get("register", 0)) > 0 else None
        self.blocks = nn.ModuleList(self.build_block() for _ in range(int(config["depth"])))
        self.last_norm = AdaptiveFinalNorm(dim)
        self.output_bias = nn.Parameter(torch.zeros(int(config["codebook_size"]) + 1))

    def build_block(self) -> HaltonBlock:
        config = self.config
        return HaltonBlock(int(config["hidden_dim"]), int(config["heads"]), int(config["ffn_dim"]), float(config.get("dropout", 0.0)))

    def embed(self, codes: torch.Tensor, labels: torch.Tensor | int | None = None, drop_label: torch.Tensor | bool | None = None) -> tuple[torch.Tensor, HaltonContext]:
        """Embed codes and append the register tokens: ``h`` is ``[B, grid * grid + R, D]``."""
        tokens = flatten_codes(codes, self.num_image_tokens)  # [B, N]
        batch = tokens.shape[0]
        ids = class_ids(labels, drop_label, batch=batch, num_classes=self.num_classes, device=tokens.device)
        hidden = self.tok_emb(tokens) + self.pos_emb.weight[None]  # [B, N, D]
        if self.reg_tokens is not None:
            registers = self.reg_tokens.weight[None].expand(batch, -1, -1)  # [B, R, D]
            hidden = torch.cat([hidden, registers], dim=1)  # [B, N + R, D]
        return hidden, HaltonContext(condition=self.cls_emb(ids), num_image_tokens=self.num_image_tokens)

    def position_weights(self, token_weights: torch.Tensor, num_positions: int) -> torch.Tensor:
        """Give the positions after the image tokens the warm-start weight 1: their inputs never change."""
        return pad_extra_positions(token_weights, num_positions)

    def head(self, hidden: torch.Tensor, context: HaltonContext) -> torch.Tensor:
        """Drop the register tokens, apply the final norm and the tied projection: ``[B, N, codebook + 1]``."""
        image = hidden[:, : context.num_image_tokens]  # [B, N, D]
        return F.linear(self.last_norm(image, context.condition), self.tok_emb.weight, self.output_bias)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | int | None = None, drop_label: torch.Tensor | bool | None = None) -> torch.Tensor:
        hidden, context = self.embed(codes, labels, drop_label)
        return self.head(self.run_blocks(hidden, context), context)


# Loading ---------------------------------------------------------------------------------------


def detect(resolved: ResolvedSource) -> bool:
    return detect_by_keys(resolved, DETECTION_KEYS)


def infer_config(release: Mapping[str, torch.Tensor], weights_file: Path, num_heads: int | None) -> dict[str, Any]:
    """Infer the adapter config from the release's tensor shapes (the release has no config file)."""
    try:
        vocab, hidden = release["tok_emb.weight"].shape
        num_positions = release["pos_emb.weight"].shape[0]
        nclass = release["cls_emb.weight"].shape[0] - 1
        ffn_dim = release["transformer.layers.0.ff.w1.weight"].shape[0]
    except KeyError as error:
        raise CheckpointError(f"'{weights_file}' lacks {error.args[0]}; it is not a Halton-MaskGIT checkpoint") from error
    if "in_proj.weight" in release:
        raise CheckpointError(f"'{weights_file}' was trained with proj > 1 (token patch projection), which mgm2fp does not support; use a release trained with proj=1")
    grid = math.isqrt(num_positions)
    if grid * grid != num_positions:
        raise CheckpointError(f"pos_emb of '{weights_file}' has {num_positions} rows, not a square grid of tokens")
    heads = resolve_num_heads(
        num_heads=num_heads,
        weights_file=weights_file,
        hidden=hidden,
        by_size_name={name: (size[0], size[2]) for name, size in SIZES.items()},
        by_hidden={size[0]: size[2] for size in SIZES.values()},
        family="Halton-MaskGIT",
    )
    return {
        "model_type": FAMILY,
        "input_size": grid,
        "hidden_dim": hidden,
        "codebook_size": vocab - 1,
        "nclass": nclass,
        "depth": count_blocks(release, RELEASE_BLOCK_KEY),
        "heads": heads,
        "ffn_dim": ffn_dim,
        "register": release["reg_tokens.weight"].shape[0] if "reg_tokens.weight" in release else 0,
        "dropout": 0.0,
    }


def rename(release: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Map release keys to adapter keys; the tied ``head.weight`` is checked, then dropped."""
    state_dict = {}
    for key, tensor in release.items():
        if key == "head.weight":
            if not torch.equal(tensor, release["tok_emb.weight"]):
                raise CheckpointError("head.weight differs from tok_emb.weight, but Halton-MaskGIT ties them; the checkpoint is not a Halton-MaskGIT release")
            continue
        if key == "head.bias":
            state_dict["output_bias"] = tensor
            continue
        state_dict[RELEASE_BLOCK_KEY.sub(lambda match: f"blocks.{match.group(1)}.", key)] = tensor
    return state_dict


def load(
    resolved: ResolvedSource,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    num_heads: int | None = None,
    keep_blocks: set[int] | Callable[[int], set[int]] | None = None,
) -> HaltonMaskGIT:
    """Load a Halton-MaskGIT ``.pth`` release (weights-only).

    Raises:
        CheckpointError: for unsafe, corrupt or unsupported files, or when the number of heads
            cannot be determined (pass ``num_heads``).
    """
    return load_pth_model(resolved, build=build, infer_config=infer_config, rename=rename, dtype=dtype, device=device, num_heads=num_heads, keep_blocks=keep_blocks)


def build(config: dict[str, Any]) -> HaltonMaskGIT:
    return HaltonMaskGIT(config)


HALTON_MASKGIT_FAMILY = register_family(
    Family(
        name=FAMILY,
        detect=detect,
        load=load,
        build=build,
        description="Halton-MaskGIT class-conditional image-token transformers (llvictorll/Halton-MaskGIT, .pth)",
        overrides=("num_heads", "keep_blocks"),
    )
)
