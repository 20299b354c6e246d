"""Pieces shared by the MaskGIT-family adapters: token and label inputs, and ``.pth`` loading.

The MaskGIT releases ship a trainer checkpoint (``.pth``) and no config, so sizes follow from
tensor shapes, and the number of attention heads comes from ``num_heads=``, an
``upstream_arguments.json`` beside the file (the upstream constructor arguments), or the
release's size names. Files are always read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from mgm2fp.dtypes import parse_dtype
from mgm2fp.errors import CheckpointError, ConfigError, SourceNotFoundError
from mgm2fp.families.base import MaskedGenerativeModel
from mgm2fp.hub import ResolvedSource
from mgm2fp.pth_weights import PTH_SUFFIXES, read_model_weights
from mgm2fp.weights import check_shapes, expected_shapes

logger = logging.getLogger(__name__)

UPSTREAM_ARGUMENTS_FILE = "upstream_arguments.json"
BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


class MaskGITModel(MaskedGenerativeModel):
    """Sizes shared by the MaskGIT adapters, read from their config (grid side, codebook, hidden size, classes)."""

    @property
    def num_image_tokens(self) -> int:
        return int(self.config["input_size"]) ** 2

    @property
    def mask_token_id(self) -> int:
        return int(self.config["codebook_size"])

    @property
    def vocab_size(self) -> int:
        """Logits per position: the codebook plus the mask token."""
        return int(self.config["codebook_size"]) + 1

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_dim"])

    @property
    def num_classes(self) -> int:
        return int(self.config["nclass"])


def flatten_codes(codes: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Return token codes ``[B, grid, grid]`` or ``[B, grid * grid]`` as ``[B, grid * grid]``.

    Raises:
        ConfigError: when the codes do not cover the model's token grid.
    """
    flat = codes.reshape(codes.shape[0], -1) if codes.ndim == 3 else codes
    if flat.ndim != 2 or flat.shape[1] != num_tokens:
        raise ConfigError(f"codes of shape {list(codes.shape)} do not fit the model's {num_tokens} tokens; pass [B, grid, grid] or [B, grid * grid]")
    return flat.long()


def pad_extra_positions(token_weights: torch.Tensor, num_positions: int) -> torch.Tensor:
    """Extend warm-start weights ``[B, N]`` of the image tokens to ``[B, P]`` with 1 at the positions after them.

    Both MaskGIT families append positions after the image tokens (the class token, register
    tokens) whose inputs never change during sampling. Three-state reuse gives such a position
    the weight of a visible, unchanged token.
    """
    extra = num_positions - token_weights.shape[1]
    if extra < 0:
        raise ValueError(f"{token_weights.shape[1]} token weights for a hidden state of only {num_positions} positions")
    if extra == 0:
        return token_weights
    ones = torch.ones(token_weights.shape[0], extra, dtype=token_weights.dtype, device=token_weights.device)
    return torch.cat([token_weights, ones], dim=1)  # [B, P]


def class_ids(labels: torch.Tensor | int | None, drop_label: torch.Tensor | bool | None, *, batch: int, num_classes: int, device: torch.device) -> torch.Tensor:
    """Return class ids ``[B]`` with ``num_classes`` (the "no class" id) where the label is dropped.

    ``labels`` None means unconditional: every label is dropped. ``drop_label`` is a bool per
    sample (or one bool for the batch) and marks the samples of the unconditional branch of
    classifier-free guidance.
    """
    if labels is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    labels = torch.as_tensor(labels, device=device).long()
    if labels.ndim == 0:
        labels = labels.expand(batch)
    if drop_label is None:
        return labels
    drop = torch.as_tensor(drop_label, device=device).bool()
    if drop.ndim == 0:
        drop = drop.expand(batch)
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


def pth_weights_file(resolved: ResolvedSource) -> Path | None:
    """Return the ``.pth`` file of ``resolved``: the named file, or the only one in its folder."""
    if resolved.weights_file is not None:
        return resolved.weights_file if resolved.weights_file.suffix in PTH_SUFFIXES else None
    if not resolved.folder.is_dir():
        return None
    candidates = sorted(path for path in resolved.folder.iterdir() if path.suffix in PTH_SUFFIXES)
    return candidates[0] if len(candidates) == 1 else None


def read_upstream_arguments(weights_file: Path) -> dict[str, Any] | None:
    """Parse the ``upstream_arguments.json`` that sits beside ``weights_file``, when there is one."""
    path = weights_file.parent / UPSTREAM_ARGUMENTS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"invalid JSON in {path}: {error}; fix or remove the file") from error


def detect_by_keys(resolved: ResolvedSource, required: tuple[str, ...]) -> bool:
    """Return True when the source is a ``.pth`` checkpoint whose model weights contain ``required``.

    An unsafe pickle raises :class:`CheckpointError` here too, so the user sees why the file
    was rejected rather than "unknown family".
    """
    if resolved.config is not None:
        return False
    file = pth_weights_file(resolved)
    if file is None:
        return False
    try:
        keys = set(read_model_weights(file))
    except CheckpointError as error:
        if "not a plain weights file" in str(error):
            raise
        return False
    return all(key in keys for key in required)


def load_pth_model(
    resolved: ResolvedSource,
    *,
    build: Callable[[dict[str, Any]], MaskedGenerativeModel],
    infer_config: Callable[[Mapping[str, torch.Tensor], Path, int | None], dict[str, Any]],
    rename: Callable[[dict[str, torch.Tensor], dict[str, Any]], dict[str, torch.Tensor]],
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    num_heads: int | None = None,
    keep_blocks: set[int] | Callable[[int], set[int]] | None = None,
) -> MaskedGenerativeModel:
    """Load a MaskGIT-family ``.pth`` checkpoint into the adapter that ``build`` returns.

    ``infer_config`` turns the release's tensors into the adapter config and ``rename`` maps
    release keys to adapter keys. ``keep_blocks`` (indices, or a function of the number of
    blocks) assigns only those blocks. The others stay on the meta device, as in the MDLM loader.

    Raises:
        SourceNotFoundError: when no single ``.pth`` file is found.
        CheckpointError: for unsafe, corrupt or mis-shaped weights.
    """
    file = pth_weights_file(resolved)
    if file is None:
        raise SourceNotFoundError(f"no single .pth file in '{resolved.source_id}'; name the weights file with filename= or ORG/NAME/path/file.pth")
    release = read_model_weights(file)
    config = infer_config(release, file, num_heads)
    state_dict = rename(release, config)
    with torch.device("meta"):
        model = build(config)
    check_shapes(expected_shapes(model), {key: tuple(tensor.shape) for key, tensor in state_dict.items()}, source=str(file), hint="pass the weights file of a supported release")

    if callable(keep_blocks):
        keep_blocks = keep_blocks(model.num_blocks)
    target_dtype = parse_dtype(dtype) or torch.float32
    kept = {}
    for key, tensor in state_dict.items():
        match = BLOCK_KEY.match(key)
        if keep_blocks is not None and match and int(match.group(1)) not in keep_blocks:
            continue
        if target_dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(target_dtype)
        # A copy detaches the tensor from the memory-mapped file and from trainer state.
        kept[key] = tensor.clone()
    model.load_state_dict(kept, strict=keep_blocks is None, assign=True)
    model.config["_name_or_path"] = resolved.source_id
    model.source_revision = resolved.revision
    model.source_folder = None  # the releases ship no tokenizer files to copy
    return model.to(device).eval() if keep_blocks is None else model.eval()


def resolve_num_heads(*, num_heads: int | None, weights_file: Path, hidden: int, by_size_name: Mapping[str, tuple[int, int]], by_hidden: Mapping[int, int], family: str) -> int:
    """Choose the number of attention heads of a release that stores none.

    The order is: ``num_heads=``, the ``heads`` field of ``upstream_arguments.json`` beside the
    file, a size name in the file name (``by_size_name`` maps it to ``(hidden, heads)``), and
    the released size with this hidden size (``by_hidden``).

    Raises:
        CheckpointError: when none applies. The message names ``num_heads=`` as the fix.
    """
    if num_heads is not None:
        return _checked_heads(int(num_heads), hidden, str(weights_file))
    arguments = read_upstream_arguments(weights_file)
    if arguments is not None and "heads" in arguments:
        return _checked_heads(int(arguments["heads"]), hidden, str(weights_file.parent / UPSTREAM_ARGUMENTS_FILE))
    words = set(re.split(r"[^a-z0-9]+", weights_file.stem.lower()))
    for name, (size_hidden, heads) in by_size_name.items():
        if name in words:
            if size_hidden == hidden:
                return heads
            logger.warning("'%s' is named %s but has hidden size %d, not %d; ignoring the name", weights_file.name, name, hidden, size_hidden)
    if hidden in by_hidden:
        logger.info("%s: %d heads, the released size with hidden size %d", weights_file.name, by_hidden[hidden], hidden)
        return by_hidden[hidden]
    raise CheckpointError(
        f"cannot tell the number of attention heads of '{weights_file}' (hidden size {hidden} matches no {family} release); "
        "pass num_heads= (--num-heads on the command line)"
    )


def _checked_heads(heads: int, hidden: int, source: str) -> int:
    if heads < 1 or hidden % heads:
        raise CheckpointError(f"hidden size {hidden} is not divisible by {heads} heads (from {source}); pass a num_heads that divides it")
    return heads


def count_blocks(keys: Mapping[str, Any] | set[str], pattern: re.Pattern[str]) -> int:
    """Return the number of distinct block indices that ``pattern`` (one group) finds in ``keys``."""
    indices = {int(match.group(1)) for key in keys if (match := pattern.match(key))}
    if indices and indices != set(range(len(indices))):
        raise CheckpointError(f"block indices {sorted(indices)} are not contiguous from 0; the checkpoint is incomplete")
    return len(indices)
