"""MDLM family: the DiT denoiser of masked diffusion language models (kuleshov-group/mdlm-owt).

An independent port of the released architecture that runs on CPU with PyTorch's
``scaled_dot_product_attention`` (no flash-attn, no ``trust_remote_code``). Parameter names follow
the release without its ``backbone.`` prefix, so the released ``model.safetensors`` loads directly.
Reference: Sahoo et al., "Simple and Effective Masked Diffusion Language Models" (arXiv 2406.07524).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mgm2fp.families.base import MaskedGenerativeModel

logger = logging.getLogger(__name__)

NEG_INFINITY = -1_000_000.0  # the SUBS parameterisation's stand-in for log(0)
REQUIRED_FIELDS = ("hidden_dim", "cond_dim", "n_blocks", "n_heads", "vocab_size")
FREQUENCY_EMBEDDING_SIZE = 256


@dataclass
class MDLMContext:
    """Inputs of every DiT block besides the hidden state."""

    conditioning: torch.Tensor  # [B, C] SiLU of the timestep embedding
    rotary_cos: torch.Tensor  # [L, d_head]
    rotary_sin: torch.Tensor  # [L, d_head]

    def select(self, index: torch.Tensor) -> "MDLMContext":
        """Return the context of the samples ``index`` ``[n]`` (the rotary tables are shared)."""
        return MDLMContext(self.conditioning.index_select(0, index), self.rotary_cos, self.rotary_sin)


def layer_norm_no_bias(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """LayerNorm without bias, computed in float32 and then scaled, as the release does."""
    normed = F.layer_norm(x.float(), (x.shape[-1],), eps=1e-5)
    return (normed * weight.float()).to(x.dtype)


class LayerNormNoBias(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm_no_bias(x, self.weight)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x * (1 + scale) + shift``."""
    return x * (1 + scale) + shift


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class VocabEmbedding(nn.Module):
    """Token embedding stored as a bare parameter ``embedding`` [V, D], as in the release."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, dim))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding[input_ids]


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of sigma (256 frequencies, max period 10000), then Linear, SiLU, Linear."""

    def __init__(self, cond_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQUENCY_EMBEDDING_SIZE, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        half = FREQUENCY_EMBEDDING_SIZE // 2
        frequencies = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half)
        arguments = sigma.float()[:, None] * frequencies[None]  # [B, half]
        embedding = torch.cat([torch.cos(arguments), torch.sin(arguments)], dim=-1)  # [B, 256]
        return self.mlp(embedding.to(self.mlp[0].weight.dtype))


class RotaryEmbedding(nn.Module):
    """Rotary tables from the persistent ``inv_freq`` buffer [d_head / 2]."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        # Computed on the CPU even under a meta-device context. On meta tensors this arithmetic
        # imports torch's compiler stack (about a second of start-up), and loading replaces it anyway.
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device="cpu").float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=True)

    def forward(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(seq_len, device=device, dtype=torch.float32)
        frequencies = torch.outer(positions, self.inv_freq.float().to(device))  # [L, d_head / 2]
        angles = torch.cat((frequencies, frequencies), dim=-1)  # [L, d_head]
        return angles.cos(), angles.sin()


class DiTBlock(nn.Module):
    """One adaLN-modulated DiT block with bidirectional rotary attention, called as ``block(h, context)``."""

    def __init__(self, dim: int, n_heads: int, cond_dim: int, mlp_ratio: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.norm1 = LayerNormNoBias(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = LayerNormNoBias(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"), nn.Linear(mlp_ratio * dim, dim))
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x: torch.Tensor, context: MDLMContext) -> torch.Tensor:
        batch, seq_len, dim = x.shape
        modulation = self.adaLN_modulation(context.conditioning)[:, None]  # [B, 1, 6D]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=2)

        attention_in = modulate(self.norm1(x), shift_msa, scale_msa)
        qkv = self.attn_qkv(attention_in).view(batch, seq_len, 3, self.n_heads, dim // self.n_heads)
        query, key, value = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # each [B, H, L, d]
        cos = context.rotary_cos[:seq_len].to(query.dtype)
        sin = context.rotary_sin[:seq_len].to(query.dtype)
        query = query * cos + rotate_half(query) * sin
        key = key * cos + rotate_half(key) * sin
        attention = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0)  # [B, H, L, d]
        attention = attention.transpose(1, 2).reshape(batch, seq_len, dim)
        x = x + gate_msa * F.dropout(self.attn_out(attention), self.dropout, self.training)

        mlp_out = self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x + gate_mlp * F.dropout(mlp_out, self.dropout, self.training)


class FinalLayer(nn.Module):
    """Final norm, adaLN shift/scale and the (untied) output projection."""

    def __init__(self, dim: int, out_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.norm_final = LayerNormNoBias(dim)
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * dim)
        for layer in (self.linear, self.adaLN_modulation):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(conditioning)[:, None].chunk(2, dim=2)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class MDLMDiT(MaskedGenerativeModel):
    """The MDLM DiT: ``forward(input_ids, sigma)`` returns raw logits ``[B, L, V]``.

    With ``time_conditioning`` false (as in mdlm-owt), sigma is replaced by zeros before the
    timestep embedding, so the output does not depend on it.
    """

    family = "mdlm"
    condition_names = ("sigma",)

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        missing = [name for name in REQUIRED_FIELDS if name not in config]
        if missing:
            from mgm2fp.errors import CheckpointError

            raise CheckpointError(f"MDLM config lacks {', '.join(missing)}; add them to config.json (see kuleshov-group/mdlm-owt)")
        wrong_types = [name for name in REQUIRED_FIELDS if isinstance(config[name], bool) or not isinstance(config[name], int)]
        if wrong_types:
            from mgm2fp.errors import CheckpointError

            raise CheckpointError(f"MDLM config field {wrong_types[0]} is {config[wrong_types[0]]!r}, not an integer; fix config.json")
        dim, n_heads, cond_dim = config["hidden_dim"], config["n_heads"], config["cond_dim"]
        if dim % n_heads:
            from mgm2fp.errors import CheckpointError

            raise CheckpointError(f"hidden_dim {dim} is not divisible by n_heads {n_heads}; fix n_heads in config.json")
        self.time_conditioning = bool(config.get("time_conditioning", False))
        self.vocab_embed = VocabEmbedding(config["vocab_size"], dim)
        self.sigma_map = TimestepEmbedder(cond_dim)
        self.rotary_emb = RotaryEmbedding(dim // n_heads)
        self.blocks = nn.ModuleList(self.build_block() for _ in range(config["n_blocks"]))
        self.output_layer = FinalLayer(dim, config["vocab_size"], cond_dim)

    @property
    def mask_token_id(self) -> int:
        return int(self.config.get("mask_token_id", self.config["vocab_size"] - 1))

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_dim"])

    def build_block(self) -> DiTBlock:
        config = self.config
        return DiTBlock(config["hidden_dim"], config["n_heads"], config["cond_dim"], dropout=float(config.get("dropout", 0.1)))

    def embed(self, input_ids: torch.Tensor, sigma: torch.Tensor | float | None = None) -> tuple[torch.Tensor, MDLMContext]:
        batch, seq_len = input_ids.shape
        sigma = _as_batch_tensor(sigma, batch, input_ids.device)
        if not self.time_conditioning:
            sigma = torch.zeros_like(sigma)
        conditioning = F.silu(self.sigma_map(sigma))  # [B, C]
        cos, sin = self.rotary_emb(seq_len, input_ids.device)
        return self.vocab_embed(input_ids), MDLMContext(conditioning, cos, sin)

    def head(self, hidden: torch.Tensor, context: MDLMContext) -> torch.Tensor:
        return self.output_layer(hidden, context.conditioning)

    def forward(self, input_ids: torch.Tensor, sigma: torch.Tensor | float | None = None) -> torch.Tensor:
        hidden, context = self.embed(input_ids, sigma)
        return self.head(self.run_blocks(hidden, context), context)


def _as_batch_tensor(sigma: torch.Tensor | float | None, batch: int, device: torch.device) -> torch.Tensor:
    if sigma is None:
        return torch.zeros(batch, device=device)
    if not torch.is_tensor(sigma):
        return torch.full((batch,), float(sigma), device=device)
    sigma = sigma.to(device)
    if sigma.ndim == 0:
        return sigma.expand(batch)
    return sigma.reshape(batch, -1)[:, 0] if sigma.ndim > 1 else sigma


def subs_log_probs(logits: torch.Tensor, input_ids: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """MDLM's SUBS parameterisation: log p(x0 | x_t) ``[B, L, V]``.

    The mask token gets log-probability about -1e6 (zero masking probability), the rest is
    normalised with a log-softmax, and positions that are not masked are copied: 0 at their token
    and -1e6 elsewhere (carry-over unmasking).
    """
    logits = logits.clone()
    logits[..., mask_token_id] += NEG_INFINITY
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    unmasked = input_ids != mask_token_id
    log_probs[unmasked] = NEG_INFINITY
    log_probs[unmasked, input_ids[unmasked]] = 0.0
    return log_probs
