"""Registry of model families.

A family joins by calling :func:`register_family` with a :class:`Family`: a detector that
recognises its checkpoints from ``config.json`` or the file layout, a loader, and a builder that
recreates the model from its saved config. No other module branches on the family name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mgm2fp.errors import UnknownFamilyError
from mgm2fp.families.base import MaskedGenerativeModel
from mgm2fp.hub import ResolvedSource

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """How to recognise, load and rebuild the checkpoints of one model family."""

    name: str
    # True when the resolved files are a checkpoint of this family.
    detect: Callable[[ResolvedSource], bool]
    # Load the weights: (resolved source, overrides such as dtype or num_heads) -> model.
    load: Callable[..., MaskedGenerativeModel]
    # Build a model with random (or meta) weights from the config that ``source_config()`` returned.
    build: Callable[[dict[str, Any]], MaskedGenerativeModel]
    description: str = ""
    # Names of the keyword overrides that ``load`` accepts besides dtype and device.
    overrides: tuple[str, ...] = ()
    # Write a (trained) model in the family's own layout: (model, folder, extra config) -> None.
    save: Callable[..., None] | None = None


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add ``family`` to the registry (replacing one of the same name) and return it."""
    if family.name in _FAMILIES:
        logger.warning("replacing the registered model family '%s'", family.name)
    _FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    _ensure_builtin_families()
    if name not in _FAMILIES:
        raise UnknownFamilyError(f"unknown model family '{name}'; known families: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def families() -> dict[str, Family]:
    _ensure_builtin_families()
    return dict(_FAMILIES)


def detect_family(resolved: ResolvedSource) -> Family:
    """Return the family whose detector accepts ``resolved``.

    Raises:
        UnknownFamilyError: when no registered family recognises the files.
    """
    _ensure_builtin_families()
    matches = [family for family in _FAMILIES.values() if family.detect(resolved)]
    if not matches:
        model_type = (resolved.config or {}).get("model_type")
        what = f"model_type '{model_type}'" if model_type else "its file layout"
        raise UnknownFamilyError(
            f"no model family recognises '{resolved.source_id}' ({what}); supported: {', '.join(sorted(_FAMILIES))}"
        )
    return matches[0]


def _ensure_builtin_families() -> None:
    # Importing the family modules registers them.
    import mgm2fp.families.builtin  # noqa: F401
