"""Read PyTorch ``.pth`` checkpoints without running code from them.

Every file goes through ``torch.load(..., weights_only=True)``, whose unpickler accepts only
tensors, containers and plain values. A pickle that would import or call anything else is
rejected with :class:`~mgm2fp.errors.CheckpointError` before any of its code runs. Trainer
checkpoints (model weights next to optimizer state and counters) are reduced to the model part,
and the prefixes that ``DistributedDataParallel`` (``module.``) and ``torch.compile``
(``_orig_mod.``) add to parameter names are removed.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mgm2fp.errors import CheckpointError

logger = logging.getLogger(__name__)

PTH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Keys under which trainers store the model weights, in the order they are tried.
MODEL_STATE_KEYS = ("model_state_dict", "state_dict", "model", "ema", "module")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def load_weights_only(path: str | Path) -> Any:
    """Unpickle ``path`` with ``weights_only=True`` on the CPU and return the object.

    Files in the zip format that ``torch.save`` writes are memory-mapped, so tensors that are
    never used are never read from disk.

    Raises:
        CheckpointError: when the pickle would import or call anything besides tensors and
            plain containers (the code is not run), or when the file is corrupt.
    """
    path = Path(path)
    try:
        use_mmap = zipfile.is_zipfile(path)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"'{path}' is not a plain weights file: its pickle would load or run code ({_unpickling_detail(error)}); "
            "mgm2fp only reads tensors, so re-save the weights as safetensors from a trusted copy"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"could not read '{path}': {error}; the file may be truncated or corrupt, download or copy it again") from error


def select_model_state(checkpoint: Any, *, source: str) -> dict[str, torch.Tensor]:
    """Return the model weights of a loaded checkpoint, without trainer state.

    A dict whose values are all tensors is the state dict itself. Otherwise the first of
    ``model_state_dict``, ``state_dict``, ``model``, ``ema`` and ``module`` that contains a state
    dict is used.

    Raises:
        CheckpointError: when no state dict is found.
    """
    if _is_state_dict(checkpoint):
        return dict(checkpoint)
    if isinstance(checkpoint, Mapping):
        for key in MODEL_STATE_KEYS:
            if key in checkpoint and _is_state_dict(checkpoint[key]):
                other = sorted(str(name) for name in checkpoint if name != key)
                if other:
                    logger.debug("reading '%s' from %s and ignoring %s", key, source, ", ".join(other))
                return dict(checkpoint[key])
        keys = ", ".join(sorted(str(name) for name in checkpoint)[:8])
        raise CheckpointError(f"'{source}' contains no model weights under {', '.join(MODEL_STATE_KEYS)} (found keys: {keys}); pass the file that stores the model")
    raise CheckpointError(f"'{source}' contains a {type(checkpoint).__name__}, not a dict of weights; pass a checkpoint written with torch.save(state_dict)")


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` and ``_orig_mod.`` from the start of every key, in any order and number."""
    stripped = {}
    for key, tensor in state_dict.items():
        name = key
        while name.startswith(WRAPPER_PREFIXES):
            for prefix in WRAPPER_PREFIXES:
                name = name.removeprefix(prefix)
        if name in stripped:
            raise CheckpointError(f"key '{key}' duplicates '{name}' once the module./_orig_mod. prefixes are removed; the checkpoint is inconsistent")
        stripped[name] = tensor
    return stripped


def read_model_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load the model weights of a ``.pth`` checkpoint: weights-only, model part, prefixes removed.

    Raises:
        CheckpointError: for unsafe, corrupt or weight-less files.
    """
    checkpoint = load_weights_only(path)
    return strip_wrapper_prefixes(select_model_state(checkpoint, source=str(path)))


def _unpickling_detail(error: pickle.UnpicklingError) -> str:
    """Return the part of torch's message that names the rejected global, such as ``GLOBAL io.open``."""
    match = re.search(r"Unsupported [^:]*: ([^\n]*?)(?: was not an allowed global|\n|$)", str(error))
    if match:
        return f"unsupported {match.group(1).strip()}"
    return "unsupported pickle content"


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) > 0 and all(isinstance(key, str) and torch.is_tensor(tensor) for key, tensor in value.items())
