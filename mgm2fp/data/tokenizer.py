"""The one place where fine-tuning loads a tokenizer for text data, through ``mgm2fp.tokenizers``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mgm2fp.errors import ConfigError
from mgm2fp.tokenizers import load_tokenizer

logger = logging.getLogger(__name__)


def resolve_tokenizer(model: Any, tokenizer: Any = None) -> Any:
    """Return the tokenizer for ``model``: ``tokenizer`` (an object, folder or hub id) or the model's own.

    Raises:
        SourceNotFoundError: when no tokenizer is given and none is known for the model.
    """
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        return tokenizer
    return load_tokenizer(model, tokenizer=None if tokenizer is None else str(tokenizer), required=True)


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
