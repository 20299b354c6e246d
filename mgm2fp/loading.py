"""``mgm2fp.load``: one entry point for hub ids, folders and weights files of every family."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mgm2fp.errors import ConfigError
from mgm2fp.families.base import MaskedGenerativeModel
from mgm2fp.families.registry import detect_family, get_family
from mgm2fp.hub import resolve_source

logger = logging.getLogger(__name__)


def load(source: str | Path, *, revision: str | None = None, filename: str | None = None, family: str | None = None, **overrides: Any) -> MaskedGenerativeModel:
    """Load a masked generative model, or a saved fixed-point model, from ``source``.

    ``source`` is a Hugging Face hub id (resolved through the local cache first, so it works
    offline once downloaded; ``revision`` pins a branch, tag or commit), a local folder, or a
    single weights file. The family is detected from ``config.json`` or the file layout unless
    ``family`` names it. ``overrides`` go to the family loader: ``dtype`` (``"bf16"``, ...),
    ``device``, and family options such as ``num_heads``. No code shipped with a checkpoint runs.

    Raises:
        SourceNotFoundError: when ``source`` cannot be found.
        UnknownFamilyError: when no family recognises it.
        CheckpointError: when its weights are corrupt or disagree with its config.
    """
    resolved = resolve_source(source, revision=revision, filename=filename)
    chosen = get_family(family) if family is not None else detect_family(resolved)
    allowed = {"dtype", "device", *chosen.overrides}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ConfigError(f"option {', '.join(unknown)} does not apply to {chosen.name} models; accepted: {', '.join(sorted(allowed))}")
    logger.info("loading %s as a %s model", source, chosen.name)
    return chosen.load(resolved, **overrides)
