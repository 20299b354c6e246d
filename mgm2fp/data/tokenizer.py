"""The one place where fine-tuning loads a tokenizer for text data.

NOTE: ``mgm2fp.tokenizers.load_tokenizer`` (the project-wide resolver) is used when it exists;
until then a tokenizer folder or hub id is loaded with ``AutoTokenizer.from_pretrained`` without
``trust_remote_code``. Once that module is on every branch, the fallback can go.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mgm2fp.errors import ConfigError
from mgm2fp.saving import TOKENIZER_FILES

logger = logging.getLogger(__name__)


def resolve_tokenizer(model: Any, tokenizer: Any = None) -> Any:
    """Return the tokenizer for ``model``: ``tokenizer`` (an object, folder or hub id) or the model's own.

    Raises:
        ConfigError: when no tokenizer is given and the model's folder has none.
    """
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        return tokenizer
    try:
        from mgm2fp.tokenizers import load_tokenizer  # type: ignore[import-not-found]
    except ImportError:
        load_tokenizer = None
    if load_tokenizer is not None:
        return load_tokenizer(model, tokenizer=None if tokenizer is None else str(tokenizer))

    from transformers import AutoTokenizer

    source = tokenizer
    if source is None:
        folder = getattr(model, "source_folder", None)
        if folder is not None and any((Path(folder) / name).is_file() for name in TOKENIZER_FILES):
            source = folder
    if source is None:
        raise ConfigError("text data needs a tokenizer and the model's folder has none; pass --tokenizer FOLDER_OR_HUB_ID (gpt2 for kuleshov-group/mdlm-owt)")
    logger.info("loading tokenizer %s", source)
    try:
        return AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise ConfigError(f"could not load tokenizer '{source}': {error}; pass --tokenizer with a folder that contains tokenizer.json or vocab files") from error


def special_token_ids(tokenizer: Any) -> tuple[int, int]:
    """Return ``(bos_id, eos_id)`` used to frame packed sequences; BOS falls back to EOS (as in GPT-2).

    Raises:
        ConfigError: when the tokenizer has neither an end-of-text nor a separator token.
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "sep_token_id", None)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        bos = getattr(tokenizer, "cls_token_id", None)
    if eos is None:
        raise ConfigError("the tokenizer has no eos_token (or sep_token) to separate documents; use a tokenizer that defines one")
    return (eos if bos is None else bos), eos
