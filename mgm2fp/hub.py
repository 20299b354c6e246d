"""Resolve a model source (Hugging Face hub id, local folder or single weights file) to local files.

Hub ids go through ``huggingface_hub``, so a populated cache works with ``HF_HUB_OFFLINE=1`` and no
network, and ``revision`` pins a branch, tag or commit. Nothing shipped with a checkpoint is ever
executed: only weights and JSON are read.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgm2fp.errors import CheckpointError, SourceNotFoundError

logger = logging.getLogger(__name__)

HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/.+)?$")

# Files fetched from a model repository when no single file is named. Modelling code (*.py) is
# deliberately left out: mgm2fp never runs code that ships with a checkpoint.
SNAPSHOT_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.md",
    "*.model",
    "tokenizer*",
]
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


@dataclass
class ResolvedSource:
    """Local files behind a model source."""

    source_id: str  # what the user passed (hub id or path)
    folder: Path  # folder that contains the config, tokenizer and weights
    weights_file: Path | None  # the one weights file to read, when known
    config: dict[str, Any] | None  # parsed config.json, when present
    revision: str | None = None  # commit hash for hub sources
    is_hub: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def weight_files(self) -> list[Path]:
        """Return every weights file of the source (one file, or all in the folder)."""
        if self.weights_file is not None:
            return [self.weights_file]
        return sorted(path for path in self.folder.iterdir() if path.suffix in WEIGHT_SUFFIXES)


def read_config(folder: Path) -> dict[str, Any] | None:
    """Parse ``folder/config.json``; return None when it is absent."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"invalid JSON in {path}: {error}; restore the file from the original checkpoint") from error


def resolve_source(source: str | Path, *, revision: str | None = None, filename: str | None = None) -> ResolvedSource:
    """Resolve ``source`` to local files.

    ``source`` is a local folder, a local weights file, a hub id ``ORG/NAME`` or a hub file
    ``ORG/NAME/path/in/repo.pth``. ``filename`` names one file inside a hub repository or folder.

    Raises:
        SourceNotFoundError: when the path does not exist and the hub (or its cache) has no such
            repository, revision or file.
    """
    path = Path(source).expanduser()
    if path.exists():
        return _resolve_local(path, str(source), filename)
    text = str(source)
    if not HUB_ID_PATTERN.match(text):
        raise SourceNotFoundError(f"model source '{text}' not found: it is neither an existing file or folder nor a hub id (ORG/NAME)")
    parts = text.split("/")
    repo_id = "/".join(parts[:2])
    if len(parts) > 2:
        filename = "/".join(parts[2:])
    return _resolve_hub(repo_id, revision=revision, filename=filename, source_id=text)


def _resolve_local(path: Path, source_id: str, filename: str | None) -> ResolvedSource:
    if path.is_file():
        return ResolvedSource(source_id=source_id, folder=path.parent, weights_file=path, config=read_config(path.parent) if path.suffix == ".safetensors" else None)
    if not any(path.iterdir()):
        raise SourceNotFoundError(f"model folder '{path}' is empty; point to a folder with config.json and weights, or to a weights file")
    weights_file = None
    if filename is not None:
        weights_file = path / filename
        if not weights_file.is_file():
            raise SourceNotFoundError(f"file '{filename}' not found in folder '{path}'")
    return ResolvedSource(source_id=source_id, folder=path, weights_file=weights_file, config=read_config(path))


def _resolve_hub(repo_id: str, *, revision: str | None, filename: str | None, source_id: str) -> ResolvedSource:
    from huggingface_hub import constants, hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    offline = bool(constants.HF_HUB_OFFLINE)
    hint = " (HF_HUB_OFFLINE=1 is set: download it once with network access, or pass a local folder)" if offline else ""
    try:
        if filename is not None:
            file_path = Path(hf_hub_download(repo_id, filename, revision=revision))
            folder = file_path.parent
            config = None
            try:
                config = read_config(Path(hf_hub_download(repo_id, "config.json", revision=revision)).parent)
            except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError):
                config = None
            return ResolvedSource(source_id=source_id, folder=folder, weights_file=file_path, config=config, revision=_snapshot_commit(folder), is_hub=True)
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=SNAPSHOT_PATTERNS))
    except RevisionNotFoundError as error:
        raise SourceNotFoundError(f"revision '{revision}' of '{repo_id}' not found; check the branch, tag or commit id") from error
    except RepositoryNotFoundError as error:
        raise SourceNotFoundError(f"hub repository '{repo_id}' not found; check the id, or log in with `hf auth login` for a private repository") from error
    except LocalEntryNotFoundError as error:  # a subclass of EntryNotFoundError in recent huggingface_hub
        raise SourceNotFoundError(f"'{source_id}' is not an existing path and is not in the Hugging Face cache{hint}") from error
    except EntryNotFoundError as error:
        raise SourceNotFoundError(f"file '{filename}' not found in hub repository '{repo_id}'") from error
    except (HfHubHTTPError, OSError) as error:
        raise SourceNotFoundError(f"could not download '{source_id}' from the Hugging Face Hub: {error}{hint}") from error
    return ResolvedSource(source_id=source_id, folder=folder, weights_file=None, config=read_config(folder), revision=_snapshot_commit(folder), is_hub=True)


def _snapshot_commit(folder: Path) -> str | None:
    """Return the commit id of a cache snapshot folder (``.../snapshots/<commit>/...``)."""
    parts = folder.resolve().parts if folder.exists() else folder.parts
    for index, part in enumerate(parts[:-1]):
        if part == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", parts[index + 1]):
            return parts[index + 1]
    return None
