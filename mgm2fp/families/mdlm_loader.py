"""Load MDLM checkpoints (kuleshov-group/mdlm-owt layout) and register the MDLM family.

The release stores every tensor under ``backbone.``; ``config.json`` carries the sizes. A bare
``.safetensors`` file without a config also loads: sizes follow from tensor shapes, except the
number of heads, which then comes from ``num_heads=`` (default: hidden size / 64).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mgm2fp.dtypes import parse_dtype
from mgm2fp.errors import CheckpointError, SourceNotFoundError
from mgm2fp.families.mdlm import MDLMDiT
from mgm2fp.families.registry import Family, register_family
from mgm2fp.hub import ResolvedSource
from mgm2fp.weights import SafetensorsReader, check_shapes, expected_shapes

logger = logging.getLogger(__name__)

PREFIX = "backbone."
MODEL_TYPES = ("mdlm",)
BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


def _weights_path(resolved: ResolvedSource) -> Path:
    if resolved.weights_file is not None:
        return resolved.weights_file
    candidates = sorted(resolved.folder.glob("*.safetensors"))
    preferred = resolved.folder / "model.safetensors"
    if preferred.is_file():
        return preferred
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise SourceNotFoundError(f"no model.safetensors in '{resolved.folder}'; MDLM checkpoints ship their weights as model.safetensors")
    raise SourceNotFoundError(f"several .safetensors files in '{resolved.folder}'; name one with filename=")


def detect(resolved: ResolvedSource) -> bool:
    if resolved.config is not None:
        return resolved.config.get("model_type") in MODEL_TYPES
    file = resolved.weights_file
    if file is None or file.suffix != ".safetensors":
        return False
    try:
        keys = SafetensorsReader(file).keys
    except CheckpointError:
        return False
    return f"{PREFIX}vocab_embed.embedding" in keys


def infer_config(reader: SafetensorsReader, num_heads: int | None) -> dict[str, Any]:
    """Infer an MDLM config from tensor shapes (used for a bare weights file)."""
    shapes = reader.shapes
    try:
        vocab_size, hidden = shapes[f"{PREFIX}vocab_embed.embedding"]
        cond_dim = shapes[f"{PREFIX}sigma_map.mlp.0.weight"][0]
    except KeyError as error:
        raise CheckpointError(f"'{reader.path}' lacks {error.args[0]}; it is not an MDLM checkpoint") from error
    n_blocks = len({int(match.group(1)) for key in shapes if (match := BLOCK_KEY.match(key.removeprefix(PREFIX)))})
    if num_heads is None:
        num_heads = max(1, hidden // 64)
        logger.warning("no config.json beside '%s': assuming n_heads=%d (hidden %d / 64); pass num_heads= to override", reader.path, num_heads, hidden)
    return {"model_type": "mdlm", "hidden_dim": hidden, "cond_dim": cond_dim, "n_blocks": n_blocks, "n_heads": num_heads, "vocab_size": vocab_size, "time_conditioning": False}


def load(
    resolved: ResolvedSource,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    num_heads: int | None = None,
    keep_blocks: set[int] | Callable[[int], set[int]] | None = None,
    **config_overrides: Any,
) -> MDLMDiT:
    """Load an MDLM DiT from ``resolved``.

    ``keep_blocks`` (a set of block indices, or a function of the number of blocks that returns
    one) reads only those blocks. The others stay on the meta device and cannot run, which lets
    conversion stream just the tensors it keeps.

    Raises:
        CheckpointError: for corrupt weights or weights that disagree with the config.
    """
    # Half-precision files (a common way to ship small models) compute in float32 unless asked.
    dtype = parse_dtype(dtype) or torch.float32
    reader = SafetensorsReader(_weights_path(resolved))
    config = dict(resolved.config) if resolved.config is not None else infer_config(reader, num_heads)
    if num_heads is not None:
        config["n_heads"] = int(num_heads)
    config.update(config_overrides)
    with torch.device("meta"):
        model = MDLMDiT(config)

    found = {key.removeprefix(PREFIX): shape for key, shape in reader.shapes.items()}
    check_shapes(expected_shapes(model), found, source=str(reader.path), hint="use the config.json that came with these weights")

    if callable(keep_blocks):
        keep_blocks = keep_blocks(model.num_blocks)
    keys = {}
    for key in reader.keys:
        name = key.removeprefix(PREFIX)
        match = BLOCK_KEY.match(name)
        if keep_blocks is not None and match and int(match.group(1)) not in keep_blocks:
            continue
        keys[key] = name
    state_dict = reader.read_many(keys, dtype)
    # Blocks that were not read stay on the meta device, so only a full load is checked strictly.
    model.load_state_dict(state_dict, strict=keep_blocks is None, assign=True)
    # Local sources are recorded by absolute path, so a converted model finds its teacher from any folder.
    model.config["_name_or_path"] = resolved.source_id if resolved.is_hub else str(Path(resolved.source_id).expanduser().resolve())
    model.source_revision = resolved.revision
    model.source_folder = resolved.folder
    return model.to(device).eval() if keep_blocks is None else model.eval()


def build(config: dict[str, Any]) -> MDLMDiT:
    return MDLMDiT(config)


def save(model: MDLMDiT, folder: Path, extra_config: dict[str, Any] | None = None) -> None:
    """Write ``model`` into the existing ``folder`` in the released layout (``backbone.`` keys), so :func:`load` reads it back."""
    from mgm2fp.families.mdlm_export import write_mdlm_files
    from mgm2fp.saving import copy_tokenizer_files

    write_mdlm_files(model, Path(folder), extra_config=extra_config)
    copy_tokenizer_files(getattr(model, "source_folder", None), Path(folder))


MDLM_FAMILY = register_family(
    Family(name="mdlm", detect=detect, load=load, build=build, description="MDLM DiT text diffusion models (kuleshov-group/mdlm-owt)", overrides=("num_heads", "keep_blocks", "time_conditioning"), save=save)
)
