"""Save an :class:`~mgm2fp.families.mdlm.MDLMDiT` in the kuleshov-group/mdlm-owt checkpoint layout.

The folder contains ``config.json`` with every field of the released config (``model_type: mdlm``,
``auto_map`` and so on) and ``model.safetensors`` with every tensor under ``backbone.``, including
the persistent ``rotary_emb.inv_freq`` buffer. The MDLM loader, and code written for the release,
read it like a downloaded release. A tokenizer, when given, is saved in the same folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from mgm2fp.dtypes import dtype_name, parse_dtype
from mgm2fp.families.mdlm import MDLMDiT
from mgm2fp.families.mdlm_loader import PREFIX
from mgm2fp.saving import atomic_directory, save_state_dict, write_json

logger = logging.getLogger(__name__)

# Fields of kuleshov-group/mdlm-owt's config.json that do not depend on the model size.
RELEASE_CONFIG_FIELDS: dict[str, Any] = {
    "architectures": ["MDLM"],
    "auto_map": {"AutoConfig": "configuration_mdlm.MDLMConfig", "AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
    "model_type": "mdlm",
    "return_dict": False,
}
SIZE_FIELDS = ("hidden_dim", "cond_dim", "n_blocks", "n_heads", "vocab_size", "model_length", "dropout", "time_conditioning")
LOADING_OPTIONS = ("is_local", "local_files_only", "cache_dir", "_commit_hash")
DEFAULTS = {"model_length": 1024, "dropout": 0.1, "time_conditioning": False}


def mdlm_release_config(model: MDLMDiT, *, dtype: torch.dtype) -> dict[str, Any]:
    """Build the ``config.json`` of ``model`` with the fields and field order of the release."""
    config = {**DEFAULTS, **model.config}
    release = {"_name_or_path": str(config.get("_name_or_path", "")), **RELEASE_CONFIG_FIELDS}
    for name in SIZE_FIELDS:
        release[name] = config[name]
    release["torch_dtype"] = dtype_name(dtype)
    release["transformers_version"] = _transformers_version()
    if "mask_token_id" in config and int(config["mask_token_id"]) != int(config["vocab_size"]) - 1:
        release["mask_token_id"] = int(config["mask_token_id"])
    return dict(sorted(release.items()))


def _transformers_version() -> str:
    try:
        from importlib.metadata import version

        return version("transformers")
    except Exception:  # noqa: BLE001 - the field is informative only
        return "unknown"


def write_mdlm_files(model: MDLMDiT, folder: Path, *, dtype: str | torch.dtype | None = None, extra_config: dict[str, Any] | None = None) -> tuple[int, torch.dtype]:
    """Write ``model.safetensors`` and ``config.json`` of the release layout into the existing ``folder``.

    Returns the number of tensors written and their floating-point dtype.
    """
    target_dtype = parse_dtype(dtype) or next(model.parameters()).dtype
    state_dict = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        state_dict[PREFIX + name] = tensor.to(target_dtype) if tensor.is_floating_point() else tensor
    save_state_dict(state_dict, Path(folder) / "model.safetensors")
    config = mdlm_release_config(model, dtype=target_dtype)
    config.update(extra_config or {})
    write_json(Path(folder) / "config.json", config)
    return len(state_dict), target_dtype


def save_tokenizer(tokenizer: Any, folder: str | Path) -> None:
    """Save ``tokenizer`` with ``save_pretrained`` in a form that transformers 4.40+ and 5.x both read.

    transformers 5 names the generic fast tokenizer class ``TokenizersBackend`` in
    ``tokenizer_config.json`` and no longer writes ``special_tokens_map.json``. transformers 4.x
    accepts only ``PreTrainedTokenizerFast``, which 5.x still accepts too, so that name is written.
    The special-token map is added when missing.
    """
    folder = Path(folder)
    tokenizer.save_pretrained(str(folder))
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        if config.get("tokenizer_class") == "TokenizersBackend":
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
        for loading_option in LOADING_OPTIONS:  # options of the call that loaded the tokenizer, not of the tokenizer
            config.pop(loading_option, None)
        write_json(config_path, config)
    special_tokens = getattr(tokenizer, "special_tokens_map", None)
    if special_tokens and not (folder / "special_tokens_map.json").is_file():
        write_json(folder / "special_tokens_map.json", {name: str(value) for name, value in special_tokens.items()})


def save_mdlm_checkpoint(model: MDLMDiT, folder: str | Path, *, tokenizer: Any = None, dtype: str | torch.dtype | None = None, overwrite: bool = True) -> Path:
    """Write ``model`` to ``folder`` in the mdlm-owt layout, atomically, and return the folder.

    ``dtype`` (for example ``"fp16"``) converts the floating-point tensors before writing, and
    the default keeps the model's dtype. ``tokenizer`` (anything with ``save_pretrained``) is
    saved into the same folder.

    Raises:
        ConfigError: for an unknown ``dtype`` name.
        OutputExistsError: when ``folder`` exists and ``overwrite`` is false.
    """
    with atomic_directory(folder, overwrite=overwrite) as temporary:
        count, target_dtype = write_mdlm_files(model, temporary, dtype=dtype)
        if tokenizer is not None:
            save_tokenizer(tokenizer, temporary)
    logger.info("saved MDLM checkpoint (%d tensors, %s) to %s", count, dtype_name(target_dtype), folder)
    return Path(folder)
