"""Atomic writing of model folders: everything goes to a temporary sibling folder, renamed at the end."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import torch
from safetensors.torch import save_file

from mgm2fp.errors import OutputExistsError

logger = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
)


# Files whose presence marks a folder as written by mgm2fp (a model, a training run or an analysis).
OUTPUT_MARKERS = ("config.json", "model.safetensors", "checkpoints", "metrics.jsonl", "cka.json", "plan.json")
# Every name mgm2fp writes into such a folder. Overwriting replaces only folders made of these
# (and hidden temporary files), so a user's own files are never deleted.
OUTPUT_NAMES = frozenset(
    {
        *OUTPUT_MARKERS,
        "README.md",
        "recipe.yaml",
        "eval_results.json",
        "adapter_model.safetensors",
        "model.safetensors.index.json",
        "trainer_state.json",
        "logs",
        "cka_heatmap.png",
        "consecutive_cka.png",
        *TOKENIZER_FILES,
    }
)


def check_replaceable(path: str | Path) -> None:
    """Raise unless ``path`` is safe to delete for ``--overwrite``.

    A folder is replaceable when it is empty, or when it contains an mgm2fp output (a model, a
    training run or an analysis) and nothing else. The current folder, its parents and the home
    folder never are.

    Raises:
        OutputExistsError: for any other existing path.
    """
    target = Path(path).expanduser().absolute()
    if not target.exists():
        return
    resolved, cwd = target.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved == Path.home().resolve():
        raise OutputExistsError(f"refusing to overwrite '{target}': it is the current folder, one of its parents or the home folder; choose a new output folder")
    if not target.is_dir():
        raise OutputExistsError(f"output '{target}' exists and is a file; choose a folder path")
    names = [entry.name for entry in target.iterdir() if not entry.name.startswith(".")]
    foreign = sorted(name for name in names if name not in OUTPUT_NAMES and not re.fullmatch(r"model-\d+-of-\d+\.safetensors", name))
    if names and (foreign or not any(name in OUTPUT_MARKERS for name in names)):
        example = f" (such as '{foreign[0]}')" if foreign else ""
        raise OutputExistsError(f"refusing to overwrite '{target}': it contains files that mgm2fp did not write{example}; choose an empty or new folder")


def _make_readable(folder: Path) -> None:
    """Give the files of ``folder`` the permissions of newly created files (mkdtemp and safetensors use 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextmanager
def atomic_directory(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` only when the block finishes without error.

    Raises:
        OutputExistsError: when ``path`` exists and ``overwrite`` is false.
    """
    target = Path(path).expanduser().absolute()
    if target.exists() and not overwrite:
        raise OutputExistsError(f"output '{target}' already exists; choose another path or pass --overwrite")
    check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    _make_readable(temporary)
    backup = None
    if target.exists():
        backup = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, backup)
    os.replace(temporary, target)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


@contextmanager
def atomic_file(path: str | Path, *, overwrite: bool = False) -> Iterator[TextIO]:
    """Yield a text handle whose file replaces ``path`` only when the block finishes without error.

    Raises:
        OutputExistsError: when ``path`` exists and ``overwrite`` is false, or is a folder.
    """
    target = Path(path).expanduser().absolute()
    if target.is_dir():
        raise OutputExistsError(f"output '{target}' is a folder; choose a file path")
    if target.exists() and not overwrite:
        raise OutputExistsError(f"output '{target}' already exists; choose another path or pass --overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            yield handle
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    os.replace(temporary, target)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def save_state_dict(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write tensors as safetensors, cloning tensors that share storage (tied weights)."""
    seen_storages: set[int] = set()
    tensors = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().cpu()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen_storages or not tensor.is_contiguous():
            tensor = tensor.contiguous().clone()
        seen_storages.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    save_file(tensors, str(path), metadata={"format": "pt", **(metadata or {})})


def copy_tokenizer_files(source_folder: Path | None, target: Path) -> list[str]:
    """Copy tokenizer files found in ``source_folder`` into ``target``; return their names."""
    if source_folder is None or not Path(source_folder).is_dir():
        return []
    copied = []
    for name in TOKENIZER_FILES:
        file = Path(source_folder) / name
        if file.is_file():
            shutil.copyfile(file, target / name)
            copied.append(name)
    return copied
