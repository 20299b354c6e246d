"""Model families: adapters from public checkpoints to the common MGM interface."""

from mgm2fp.families.base import BlockCallCounter, MaskedGenerativeModel
from mgm2fp.families.registry import Family, detect_family, families, get_family, register_family

__all__ = ["BlockCallCounter", "Family", "MaskedGenerativeModel", "detect_family", "families", "get_family", "register_family"]
