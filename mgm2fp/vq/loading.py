"""Load VQ decoder weights (weights-only) from the released tokenizer files.

The releases are trainer checkpoints: LlamaGen stores the ``VQModel`` weights under ``model``,
taming-transformers under ``state_dict`` (a Lightning checkpoint, next to the discriminator's
``loss.*`` weights). Only the decoder path is kept: ``quantize.embedding.weight``,
``post_quant_conv.*`` and ``decoder.*``. Sizes follow from tensor shapes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from mgm2fp.dtypes import parse_dtype
from mgm2fp.errors import CheckpointError, ConfigError, SourceNotFoundError
from mgm2fp.hub import resolve_source
from mgm2fp.pth_weights import PTH_SUFFIXES, read_model_weights
from mgm2fp.vq.decoders import L2_NORMALIZED, VQ_DECODERS, VQDecoder, VQDecoderConfig
from mgm2fp.weights import check_shapes, expected_shapes

logger = logging.getLogger(__name__)

DECODER_PREFIXES = ("quantize.embedding.", "post_quant_conv.", "decoder.")
# Release key of the first residual block of each level; group 1 is the list index.
LEVEL_KEYS = {
    "llamagen": re.compile(r"^decoder\.conv_blocks\.(\d+)\.res\.(\d+)\.conv1\.weight$"),
    "taming": re.compile(r"^decoder\.up\.(\d+)\.block\.(\d+)\.conv1\.weight$"),
}
ATTENTION_KEYS = {
    "llamagen": re.compile(r"^decoder\.conv_blocks\.(\d+)\.attn\.0\.q\.weight$"),
    "taming": re.compile(r"^decoder\.up\.(\d+)\.attn\.0\.q\.weight$"),
}


def read_vq_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the decoder-path tensors of a tokenizer file (``.safetensors`` or a weights-only ``.pth``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state_dict = load_file(str(path))
    elif path.suffix in PTH_SUFFIXES:
        state_dict = read_model_weights(path)
    else:
        raise ConfigError(f"unsupported tokenizer file '{path.name}'; pass a .safetensors, .pth, .pt or .ckpt file")
    return {key: tensor for key, tensor in state_dict.items() if key.startswith(DECODER_PREFIXES)}


def detect_vq_kind(keys: Mapping[str, torch.Tensor] | set[str]) -> str:
    """Return ``llamagen`` or ``taming`` from the decoder key layout.

    Raises:
        CheckpointError: when neither layout matches.
    """
    if any(key.startswith("decoder.conv_blocks.") for key in keys):
        return "llamagen"
    if any(key.startswith("decoder.up.") for key in keys):
        return "taming"
    raise CheckpointError("no LlamaGen (decoder.conv_blocks.*) or taming-transformers (decoder.up.*) decoder weights found; pass the tokenizer's weights file")


def infer_vq_config(state_dict: Mapping[str, torch.Tensor], kind: str, *, l2_normalize: bool | None = None) -> VQDecoderConfig:
    """Infer a :class:`VQDecoderConfig` from decoder tensor shapes."""
    try:
        codebook_size, embed_dim = state_dict["quantize.embedding.weight"].shape
        z_channels = state_dict["post_quant_conv.weight"].shape[0]
    except KeyError as error:
        raise CheckpointError(f"tokenizer weights lack {error.args[0]}; pass the full VQ model file") from error

    level_outputs: dict[int, int] = {}
    block_counts: dict[int, int] = {}
    for key, tensor in state_dict.items():
        match = LEVEL_KEYS[kind].match(key)
        if match:
            index, block = int(match.group(1)), int(match.group(2))
            block_counts[index] = max(block_counts.get(index, 0), block + 1)
            if block == 0:
                level_outputs[index] = tensor.shape[0]
    num_levels = len(level_outputs)
    if num_levels == 0 or set(level_outputs) != set(range(num_levels)):
        raise CheckpointError(f"incomplete {kind} decoder weights: levels {sorted(level_outputs)} found")
    attention_indices = {int(match.group(1)) for key in state_dict if (match := ATTENTION_KEYS[kind].match(key))}

    # LlamaGen lists levels from the lowest resolution up; taming indexes them by level.
    def level_of(index: int) -> int:
        return num_levels - 1 - index if kind == "llamagen" else index

    channels_by_level = [level_outputs[index] for index in sorted(level_outputs, key=level_of)]
    base = min(channels_by_level)
    if any(channels % base for channels in channels_by_level):
        raise CheckpointError(f"decoder level channels {channels_by_level} are not multiples of {base}; the layout is not supported")
    return VQDecoderConfig(
        codebook_size=codebook_size,
        embed_dim=embed_dim,
        z_channels=z_channels,
        channels=base,
        channel_multipliers=tuple(channels // base for channels in channels_by_level),
        num_res_blocks=block_counts[0] - 1,
        attention_levels=tuple(sorted(level_of(index) for index in attention_indices)),
        l2_normalize_codebook=L2_NORMALIZED[kind] if l2_normalize is None else l2_normalize,
    )


def load_vq_decoder(
    source: str | Path,
    *,
    kind: str | None = None,
    revision: str | None = None,
    filename: str | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    l2_normalize: bool | None = None,
) -> VQDecoder:
    """Load the decoder path of a VQ tokenizer from a file, folder or hub id (weights-only).

    ``kind`` (``llamagen`` or ``taming``) is detected from the key layout when omitted.
    ``l2_normalize`` overrides whether codebook entries are L2-normalised before decoding
    (default: yes for LlamaGen, no for taming).

    Raises:
        SourceNotFoundError: when the source or its weights file is not found.
        CheckpointError: for unsafe, corrupt or unrecognised files.
    """
    resolved = resolve_source(source, revision=revision, filename=filename)
    candidates = resolved.weight_files()
    if len(candidates) != 1:
        raise SourceNotFoundError(f"expected one tokenizer weights file in '{source}', found {len(candidates)}; name it with filename=")
    file = candidates[0]
    state_dict = read_vq_weights(file)
    detected = detect_vq_kind(state_dict)
    if kind is not None and kind != detected:
        if kind not in VQ_DECODERS:
            raise ConfigError(f"unknown VQ decoder kind '{kind}'; use one of {', '.join(VQ_DECODERS)}")
        raise CheckpointError(f"'{file.name}' has the {detected} decoder layout, not {kind}; pass kind='{detected}' or the right file")
    config = infer_vq_config(state_dict, detected, l2_normalize=l2_normalize)
    with torch.device("meta"):
        decoder = VQ_DECODERS[detected](config)
    check_shapes(expected_shapes(decoder), {key: tuple(tensor.shape) for key, tensor in state_dict.items()}, source=str(file), hint=f"pass the {detected} tokenizer's weights file")
    target_dtype = parse_dtype(dtype)
    tensors = {key: (tensor.to(target_dtype) if target_dtype is not None and tensor.is_floating_point() else tensor).clone() for key, tensor in state_dict.items()}
    decoder.load_state_dict(tensors, strict=True, assign=True)
    logger.info("loaded the %s VQ decoder from %s (%d codes, f%d)", detected, file, config.codebook_size, config.downsampling_factor)
    return decoder.to(device).eval()
