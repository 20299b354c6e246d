"""Registry of samplers, one per model family.

A sampler is called as ``fn(model, *, num_samples, seq_len, schedule_plan, reuse, generator,
**options) -> SampleResult``. ``model`` is the source model or a fixed-point model of the family;
``seq_len`` may be None (the family's default length); ``schedule_plan`` comes from
:func:`mgm2fp.sampling.budget.plan_budget`; ``reuse`` is a
:class:`~mgm2fp.sampling.reuse.ReuseConfig`. :func:`mgm2fp.sample` always passes the options
``solver_options`` (a :class:`~mgm2fp.sampling.runner.SolverOptions`) and ``callback`` (called
with each finished step's statistics, or None), plus the family options that the caller gave.
A sampler runs the model through :class:`~mgm2fp.sampling.runner.DenoisingRunner`, which plans
warm starts and counts the budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mgm2fp.errors import UnknownFamilyError
from mgm2fp.families.base import MaskedGenerativeModel
from mgm2fp.sampling.result import SampleResult

logger = logging.getLogger(__name__)

Sampler = Callable[..., SampleResult]

_SAMPLERS: dict[str, Sampler] = {}


def register_sampler(family: str, fn: Sampler) -> Sampler:
    """Register ``fn`` as the sampler of ``family`` (replacing one of the same name) and return it."""
    if family in _SAMPLERS and _SAMPLERS[family] is not fn:
        logger.warning("replacing the registered sampler of family '%s'", family)
    _SAMPLERS[family] = fn
    return fn


def get_sampler(family: str) -> Sampler:
    """Return the sampler of ``family``.

    Raises:
        UnknownFamilyError: when no sampler is registered for it.
    """
    _ensure_builtin_samplers()
    if family not in _SAMPLERS:
        raise UnknownFamilyError(f"no sampler is registered for model family '{family}'; families with a sampler: {', '.join(sorted(_SAMPLERS)) or 'none'}")
    return _SAMPLERS[family]


def samplers() -> dict[str, Sampler]:
    """Return a copy of the registry, family name to sampler."""
    _ensure_builtin_samplers()
    return dict(_SAMPLERS)


def sampling_family(model: MaskedGenerativeModel) -> str:
    """Return the family whose sampler serves ``model``: the source family for a fixed-point model."""
    return str(getattr(model, "source_family", None) or model.family)


def _ensure_builtin_samplers() -> None:
    # Importing the sampler modules registers them.
    import mgm2fp.sampling.builtin  # noqa: F401
