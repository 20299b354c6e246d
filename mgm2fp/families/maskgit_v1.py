"""MaskGIT-pytorch v1 family: the bidirectional token transformer of valeoai/Maskgit-pytorch (branch v1.0).

An independent port of the released ``MaskTransformer`` (weights ``llvictorll/Maskgit-pytorch``,
``pretrained_maskgit/MaskGIT/MaskGIT_ImageNet_256.pth``). One embedding table contains the image
codes, the mask token and the class tokens. The class token is appended after the image tokens,
so the sequence has ``grid * grid + 1`` positions. Pre-norm blocks (LayerNorm, multi-head
attention, LayerNorm, GELU MLP) sit between an input and an output MLP, and the logits are the
hidden states times the embedding table plus a per-position bias.

Adapter names follow the release, except the blocks: ``transformer.layers.{i}.0.norm`` becomes
``blocks.{i}.attention_norm``, ``.0.fn.mha`` becomes ``.attention``, ``.1.norm`` becomes
``.mlp_norm`` and ``.1.fn.net`` becomes ``.mlp``.
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
from mgm2fp.families.maskgit_common import MaskGITModel, class_ids, count_blocks, detect_by_keys, flatten_codes, load_pth_model, pad_extra_positions, read_upstream_arguments, resolve_num_heads
from mgm2fp.families.registry import Family, register_family
from mgm2fp.hub import ResolvedSource

logger = logging.getLogger(__name__)

FAMILY = "maskgit-v1"
EDGE_LAYER_NORM_EPS = 1e-12  # the LayerNorms of the input and output MLPs
BLOCK_LAYER_NORM_EPS = 1e-5
REQUIRED_FIELDS = ("input_size", "hidden_dim", "codebook_size", "nclass", "depth", "heads", "mlp_dim")
# The ImageNet release: hidden 768, 16 heads, codebook 1024, 1000 classes.
RELEASE_HEADS = {768: 16}
RELEASE_NUM_CLASSES = 1000
RELEASE_BLOCK_KEY = re.compile(r"^transformer\.layers\.(\d+)\.")
DETECTION_KEYS = ("pos_emb", "bias", "tok_emb.weight", "first_layer.0.weight", "last_layer.0.weight", "transformer.layers.0.0.fn.mha.in_proj_weight")
# Release block key suffix -> adapter block key suffix.
BLOCK_RENAMES = (("0.norm.", "attention_norm."), ("0.fn.mha.", "attention."), ("1.norm.", "mlp_norm."), ("1.fn.net.", "mlp."))


@dataclass
class MaskGITv1Context:
    """The blocks need no conditioning; the head needs the number of image tokens."""

    num_image_tokens: int

    def select(self, index: torch.Tensor) -> "MaskGITv1Context":
        """Return the context of the samples ``index``: nothing in it depends on the sample."""
        return self


class MultiheadSelfAttention(nn.Module):
    """Self-attention with ``nn.MultiheadAttention``'s parameter names (packed ``in_proj``)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(batch, length, 3, self.heads, dim // self.heads)
        query, key, value = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # each [B, H, L, d]
        attention = F.scaled_dot_product_attention(query, key, value, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(attention.transpose(1, 2).reshape(batch, length, dim))


class MaskGITv1Block(nn.Module):
    """Pre-norm block ``x + attention(LN(x))``, then ``x + mlp(LN(x))``, called as ``block(h, context)``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim, eps=BLOCK_LAYER_NORM_EPS)
        self.attention = MultiheadSelfAttention(dim, heads, dropout)
        self.mlp_norm = nn.LayerNorm(dim, eps=BLOCK_LAYER_NORM_EPS)
        # Indices 0 and 3 hold the weights, as in the release's ``fn.net``.
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: MaskGITv1Context) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class MaskGITv1(MaskGITModel):
    """MaskGIT-pytorch v1: ``forward(codes, labels, drop_label)`` returns logits ``[B, grid * grid, codebook + 1]``.

    Token ids: image codes ``0..codebook-1``, mask ``codebook``, class ``c`` at
    ``codebook + 1 + c`` and the "no class" token (dropped label) at ``codebook + 1 + nclass``.
    """

    family = FAMILY
    condition_names = ("labels", "drop_label")
    # The tokenizer the release was trained with (a key of mgm2fp.vq.VQ_DECODERS).
    image_tokenizer = "taming"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        missing = [name for name in REQUIRED_FIELDS if name not in config]
        if missing:
            raise CheckpointError(f"MaskGIT v1 config lacks {', '.join(missing)}; rebuild it from the release with mgm2fp.load")
        dim, heads = int(config["hidden_dim"]), int(config["heads"])
        if dim % heads:
            raise CheckpointError(f"hidden_dim {dim} is not divisible by heads {heads}; pass a num_heads that divides it")
        dropout = float(config.get("dropout", 0.0))
        total_tokens = int(config["codebook_size"]) + 1 + int(config["nclass"]) + 1
        self.tok_emb = nn.Embedding(total_tokens, dim)
        self.pos_emb = nn.Parameter(torch.zeros(1, self.num_image_tokens + 1, dim))
        nn.init.trunc_normal_(self.pos_emb, std=0.02)
        self.first_layer = nn.Sequential(
            nn.LayerNorm(dim, eps=EDGE_LAYER_NORM_EPS), nn.Dropout(dropout), nn.Linear(dim, dim), nn.GELU(),
            nn.LayerNorm(dim, eps=EDGE_LAYER_NORM_EPS), nn.Dropout(dropout), nn.Linear(dim, dim),
        )
        self.blocks = nn.ModuleList(self.build_block() for _ in range(int(config["depth"])))
        self.last_layer = nn.Sequential(nn.LayerNorm(dim, eps=EDGE_LAYER_NORM_EPS), nn.Dropout(dropout), nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=EDGE_LAYER_NORM_EPS))
        self.bias = nn.Parameter(torch.zeros(self.num_image_tokens + 1, total_tokens))

    def build_block(self) -> MaskGITv1Block:
        config = self.config
        return MaskGITv1Block(int(config["hidden_dim"]), int(config["heads"]), int(config["mlp_dim"]), float(config.get("dropout", 0.0)))

    def embed(self, codes: torch.Tensor, labels: torch.Tensor | int | None = None, drop_label: torch.Tensor | bool | None = None) -> tuple[torch.Tensor, MaskGITv1Context]:
        """Append the class token to the codes, embed, add positions, apply the input MLP: ``[B, N + 1, D]``."""
        tokens = flatten_codes(codes, self.num_image_tokens)  # [B, N]
        ids = class_ids(labels, drop_label, batch=tokens.shape[0], num_classes=self.num_classes, device=tokens.device)
        class_tokens = ids + int(self.config["codebook_size"]) + 1  # [B]
        sequence = torch.cat([tokens, class_tokens[:, None]], dim=1)  # [B, N + 1]
        hidden = self.first_layer(self.tok_emb(sequence) + self.pos_emb)  # [B, N + 1, D]
        return hidden, MaskGITv1Context(num_image_tokens=self.num_image_tokens)

    def position_weights(self, token_weights: torch.Tensor, num_positions: int) -> torch.Tensor:
        """Give the positions after the image tokens the warm-start weight 1: their inputs never change."""
        return pad_extra_positions(token_weights, num_positions)

    def head(self, hidden: torch.Tensor, context: MaskGITv1Context) -> torch.Tensor:
        """Output MLP, then ``h @ tok_emb.T + bias`` restricted to image positions and codebook + mask logits."""
        num_tokens, vocab = context.num_image_tokens, self.vocab_size
        image = self.last_layer(hidden[:, :num_tokens])  # [B, N, D]
        return F.linear(image, self.tok_emb.weight[:vocab]) + self.bias[:num_tokens, :vocab]  # [B, N, codebook + 1]

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | int | None = None, drop_label: torch.Tensor | bool | None = None) -> torch.Tensor:
        hidden, context = self.embed(codes, labels, drop_label)
        return self.head(self.run_blocks(hidden, context), context)


# Loading ---------------------------------------------------------------------------------------


def detect(resolved: ResolvedSource) -> bool:
    return detect_by_keys(resolved, DETECTION_KEYS)


def _split_vocabulary(total_tokens: int, weights_file: Path, arguments: dict[str, Any] | None, num_classes: int | None) -> tuple[int, int]:
    """Split the embedding rows into (codebook size, classes): ``total = codebook + 1 + nclass + 1``."""
    if num_classes is None and arguments is not None and "nclass" in arguments:
        num_classes = int(arguments["nclass"])
    if num_classes is None:
        num_classes = RELEASE_NUM_CLASSES
        if total_tokens != 1024 + 1 + RELEASE_NUM_CLASSES + 1:
            logger.warning("'%s' does not say how many classes it has: assuming %d (ImageNet); pass num_classes= if that is wrong", weights_file.name, num_classes)
    codebook_size = total_tokens - num_classes - 2
    if codebook_size < 1:
        raise CheckpointError(f"tok_emb of '{weights_file}' has {total_tokens} rows, too few for {num_classes} classes; pass the right num_classes")
    if arguments is not None and "codebook_size" in arguments and int(arguments["codebook_size"]) != codebook_size:
        raise CheckpointError(f"codebook_size {arguments['codebook_size']} in upstream_arguments.json disagrees with the weights ({codebook_size}); fix or remove the file")
    return codebook_size, num_classes


def infer_config(release: Mapping[str, torch.Tensor], weights_file: Path, num_heads: int | None, num_classes: int | None = None) -> dict[str, Any]:
    """Infer the adapter config from the release's tensor shapes and an ``upstream_arguments.json`` beside it."""
    try:
        total_tokens, hidden = release["tok_emb.weight"].shape
        num_positions = release["pos_emb"].shape[1] - 1
        mlp_dim = release["transformer.layers.0.1.fn.net.0.weight"].shape[0]
    except KeyError as error:
        raise CheckpointError(f"'{weights_file}' lacks {error.args[0]}; it is not a MaskGIT-pytorch v1 checkpoint") from error
    grid = math.isqrt(num_positions)
    if grid * grid != num_positions:
        raise CheckpointError(f"pos_emb of '{weights_file}' has {num_positions} image positions, not a square grid of tokens")
    arguments = read_upstream_arguments(weights_file)
    codebook_size, nclass = _split_vocabulary(total_tokens, weights_file, arguments, num_classes)
    heads = resolve_num_heads(num_heads=num_heads, weights_file=weights_file, hidden=hidden, by_size_name={}, by_hidden=RELEASE_HEADS, family="MaskGIT-pytorch v1")
    return {
        "model_type": FAMILY,
        "input_size": grid,
        "hidden_dim": hidden,
        "codebook_size": codebook_size,
        "nclass": nclass,
        "depth": count_blocks(release, RELEASE_BLOCK_KEY),
        "heads": heads,
        "mlp_dim": mlp_dim,
        "dropout": float((arguments or {}).get("dropout", 0.0)),
    }


def rename(release: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Map release keys to adapter keys (only the block keys change)."""
    state_dict = {}
    for key, tensor in release.items():
        match = RELEASE_BLOCK_KEY.match(key)
        if match is None:
            state_dict[key] = tensor
            continue
        rest = key[match.end():]
        for old, new in BLOCK_RENAMES:
            if rest.startswith(old):
                rest = new + rest.removeprefix(old)
                break
        state_dict[f"blocks.{match.group(1)}.{rest}"] = tensor
    return state_dict


def load(
    resolved: ResolvedSource,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    num_heads: int | None = None,
    num_classes: int | None = None,
    keep_blocks: set[int] | Callable[[int], set[int]] | None = None,
) -> MaskGITv1:
    """Load a MaskGIT-pytorch v1 ``.pth`` release (weights-only).

    ``num_classes`` splits the shared embedding table when no ``upstream_arguments.json`` names
    it (default 1000, ImageNet).

    Raises:
        CheckpointError: for unsafe, corrupt or unsupported files, or when the number of heads
            cannot be determined (pass ``num_heads``).
    """

    def infer(release: Mapping[str, torch.Tensor], weights_file: Path, heads: int | None) -> dict[str, Any]:
        return infer_config(release, weights_file, heads, num_classes)

    return load_pth_model(resolved, build=build, infer_config=infer, rename=rename, dtype=dtype, device=device, num_heads=num_heads, keep_blocks=keep_blocks)


def build(config: dict[str, Any]) -> MaskGITv1:
    return MaskGITv1(config)


MASKGIT_V1_FAMILY = register_family(
    Family(
        name=FAMILY,
        detect=detect,
        load=load,
        build=build,
        description="MaskGIT-pytorch v1 class-conditional image-token transformers (llvictorll/Maskgit-pytorch, .pth)",
        overrides=("num_heads", "num_classes", "keep_blocks"),
    )
)
