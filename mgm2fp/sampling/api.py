"""``mgm2fp.sample``: budgeted sampling from a source model or a fixed-point model of any family."""

from __future__ import annotations

import inspect
import logging
import numbers
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from mgm2fp.errors import ConfigError, SourceNotFoundError
from mgm2fp.families.base import MaskedGenerativeModel
from mgm2fp.images import image_tokenizer_kind
from mgm2fp.sampling.budget import DEFAULT_RAMP, plan_budget
from mgm2fp.sampling.registry import get_sampler, sampling_family
from mgm2fp.sampling.result import SampleResult, StepStats
from mgm2fp.sampling.reuse import ReuseConfig
from mgm2fp.sampling.runner import SolverOptions
from mgm2fp.tokenizers import decode_tokens, load_tokenizer

logger = logging.getLogger(__name__)


def sample(
    model: MaskedGenerativeModel,
    num_samples: int = 1,
    seq_len: int | None = None,
    budget: int | None = None,
    steps: int | None = None,
    schedule: str = "decreasing",
    reuse: str | ReuseConfig = "3sr",
    seed: int = 0,
    *,
    num_iterations: int | None = None,
    ramp: float = DEFAULT_RAMP,
    solver: str | Callable[..., Any] = "picard",
    tolerance: float | None = None,
    track_residuals: bool = False,
    solver_kwargs: dict[str, Any] | None = None,
    gamma_min: float | None = None,
    gamma_max: float | None = None,
    gamma_changed: float | None = None,
    decode: bool = True,
    tokenizer: Any = None,
    callback: Callable[[StepStats], None] | None = None,
    **options: Any,
) -> SampleResult:
    """Draw ``num_samples`` samples as one batch within ``budget`` block forward passes.

    ``budget`` counts transformer-block forward passes of the whole trajectory, and one batched
    block call counts once. The sampler never exceeds it, and ``result.block_forward_passes`` is
    exactly what it spent. Give ``budget``, ``steps`` or both; ``schedule`` (``decreasing``,
    ``fixed``, ``increasing``) and ``num_iterations`` shape the split of a fixed-point model's
    budget (see :func:`mgm2fp.sampling.budget.plan_budget`). ``reuse`` (``none``, ``full``,
    ``3sr``) and the gamma coefficients set the solver's warm start across steps. They have no
    effect on a model without a fixed point. ``solver`` (``picard`` or ``anderson``, with
    ``solver_kwargs`` such as ``{"memory": 5}``), ``tolerance`` (per-sample early stop on the
    relative residual) and ``track_residuals`` configure the fixed-point solve. ``options`` go to
    the family's sampler (MDLM: ``top_p``, ``cache``, ``eps``; MaskGIT families: ``labels``,
    ``order``, ``reveal_schedule``, ``temperature``, ``gumbel_temperature``, ``cfg_weight``,
    ``cfg_ramp``, see :func:`mgm2fp.sampling.maskgit.sample_maskgit`).

    With ``decode``, text samples are decoded with the model's tokenizer (or ``tokenizer``); when
    the model has none, ``result.texts`` is None. Image models sample token grids
    (``seq_len`` must be None or the grid's size) and leave ``result.texts`` None; decode their
    codes with :func:`mgm2fp.images.decode_tokens`. The same ``seed`` gives the same samples on CPU.

    Raises:
        ConfigError: for invalid options, an option the family's sampler does not take, or a budget
            that cannot pay for the requested steps.
        UnknownFamilyError: when no sampler is registered for the model's family.
        SourceNotFoundError: when ``tokenizer`` is given but cannot be loaded.
    """
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise ConfigError(f"num_samples={num_samples!r} is invalid; use a positive integer")
    family = sampling_family(model)
    sampler = get_sampler(family)
    _check_family_options(sampler, family, options)
    plan = plan_budget(model, budget=budget, steps=steps, schedule=schedule, num_iterations=num_iterations, ramp=ramp)
    reuse_config = ReuseConfig.from_value(reuse, gamma_min=gamma_min, gamma_max=gamma_max, gamma_changed=gamma_changed)
    solver_options = SolverOptions(solver=solver, tolerance=tolerance, track_residuals=track_residuals, options=dict(solver_kwargs or {}))
    text_tokenizer = _resolve_tokenizer(model, tokenizer) if decode else None
    logger.info("sampling %d x %s from a %s model: %s, reuse %s", num_samples, seq_len, family, plan.describe(), reuse_config.mode)

    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(int(seed))
    was_training = model.training
    started = time.perf_counter()
    model.eval()
    try:
        with torch.no_grad():
            result = sampler(model, num_samples=int(num_samples), seq_len=seq_len, schedule_plan=plan, reuse=reuse_config, generator=generator, solver_options=solver_options, callback=callback, **options)
    finally:
        model.train(was_training)
    result.seconds = time.perf_counter() - started
    result.seed = int(seed)
    if text_tokenizer is not None:
        result.texts = decode_tokens(text_tokenizer, result.tokens, mask_token_id=model.mask_token_id)
    return result


def sample_in_batches(model: MaskedGenerativeModel, num_samples: int, *, batch_size: int, seed: int = 0, tokenizer: Any = None, decode: bool = True, **sample_options: Any) -> Iterator[SampleResult]:
    """Yield :class:`SampleResult` batches of at most ``batch_size`` samples, ``num_samples`` in all.

    Batch ``i`` uses seed ``seed + i``, and each batch is one trajectory with the whole budget.
    The tokenizer is resolved once. ``sample_options`` are those of :func:`sample`. Per-sample
    ``labels`` (a sequence or tensor of ``num_samples`` class ids) are split over the batches.
    """
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} is invalid; use a positive integer")
    text_tokenizer = _resolve_tokenizer(model, tokenizer) if decode else None
    labels = sample_options.pop("labels", None)
    per_sample = labels is not None and not isinstance(labels, (str, numbers.Integral)) and getattr(labels, "ndim", 1) > 0
    if per_sample and len(labels) != num_samples:
        raise ConfigError(f"{len(labels)} labels were given for {num_samples} samples; pass one label per sample, one int for all, or 'random'")
    for index, start in enumerate(range(0, int(num_samples), int(batch_size))):
        count = min(int(batch_size), int(num_samples) - start)
        if labels is not None:
            sample_options["labels"] = labels[start : start + count] if per_sample else labels
        yield sample(model, count, seed=seed + index, tokenizer=text_tokenizer, decode=text_tokenizer is not None, **sample_options)


def _check_family_options(sampler: Callable[..., SampleResult], family: str, options: dict[str, Any]) -> None:
    """Reject options that the family's sampler does not take, naming those it does."""
    parameters = inspect.signature(sampler).parameters
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return
    reserved = {"model", "num_samples", "seq_len", "schedule_plan", "reuse", "generator", "solver_options", "callback", "defaults"}
    accepted = sorted(name for name in parameters if name not in reserved)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"option {', '.join(unknown)} does not apply to the {family} sampler; its options are {', '.join(accepted) or 'none'}")


def _resolve_tokenizer(model: MaskedGenerativeModel, tokenizer: Any) -> Any:
    """Load the tokenizer; a default that cannot be loaded only disables decoding, with a warning.

    Image models have no text tokenizer, so they get None (naming one raises ConfigError).
    """
    if image_tokenizer_kind(model) is not None:
        if tokenizer is not None:
            raise ConfigError(f"a {sampling_family(model)} model samples image tokens, not text; decode them with a VQ decoder (mgm2fp.images.decode_tokens) instead of tokenizer=")
        return None
    if tokenizer is not None:
        return load_tokenizer(model, tokenizer)
    try:
        return load_tokenizer(model)
    except SourceNotFoundError as error:
        logger.warning("samples are not decoded: %s", error)
        return None
