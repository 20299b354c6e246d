"""Samplers of the MaskGIT families: Halton order and confidence order, with classifier-free guidance.

Sampling starts from an all-mask token grid and reveals ``counts[i]`` cells at step ``i``, where
the counts follow the ``arccos`` or ``cosine`` schedule of the fraction still masked (MaskGIT,
Chang et al., arXiv 2202.04200). Which cells a step reveals depends on the order:

- ``halton``: a fixed order that walks the grid along the Halton low-discrepancy sequence in
  bases 2 (columns) and 3 (rows), so revealed cells stay spread over the image (Halton-MaskGIT,
  Besnier et al., ICLR 2025). Tokens are drawn from the softmax at temperature ``temperature``.
- ``confidence``: draw a token for every masked cell, then reveal the cells with the highest
  ``log p(token) + g_i * Gumbel`` noise, where ``g_i = gumbel_temperature * (1 - i / steps)``
  falls linearly to 0 (MaskGIT).

Revealed cells never change, so three-state reuse applies to the grids as it does to text.

Classifier-free guidance runs the conditional and the unconditional (dropped-label) inputs as one
batch of ``2B`` rows and mixes the logits as ``(1 + w_i) * l_cond - w_i * l_uncond``. ``w_i``
ramps linearly from 0 at the first step to ``cfg_weight`` at the last (``cfg_ramp="linear"``, the
MaskGIT v1 default) or stays ``cfg_weight`` (``"constant"``). One batched block call counts as one
block forward pass whatever its rows, so guidance doubles the compute of a step but not its
budget, exactly as a larger batch would. Budget accounting follows arXiv 2605.31215.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mgm2fp.errors import ConfigError
from mgm2fp.families.base import MaskedGenerativeModel
from mgm2fp.sampling.budget import SchedulePlan
from mgm2fp.sampling.categorical import sample_categorical
from mgm2fp.sampling.registry import register_sampler
from mgm2fp.sampling.result import SampleResult
from mgm2fp.sampling.reuse import ReuseConfig
from mgm2fp.sampling.runner import DenoisingRunner, SolverOptions, StepCallback

logger = logging.getLogger(__name__)

ORDERS = ("halton", "confidence")
REVEAL_SCHEDULES = ("arccos", "cosine")
CFG_RAMPS = ("linear", "constant")
# MaskGIT v1's default Gumbel temperature of the confidence noise (valeoai/Maskgit-pytorch v1.0).
GUMBEL_TEMPERATURE = 4.5


@dataclass(frozen=True)
class MaskGITDefaults:
    """A family's default decoding rule, used where the caller gives no value."""

    order: str
    cfg_ramp: str
    reveal_schedule: str = "arccos"


# NOTE: the Halton-MaskGIT release reveals cells with a power schedule (exponent 2.5 in its
# sampler's defaults), which is not implemented here. Arccos is our default for both families.
FAMILY_DEFAULTS = {
    "halton-maskgit": MaskGITDefaults(order="halton", cfg_ramp="constant"),
    "maskgit-v1": MaskGITDefaults(order="confidence", cfg_ramp="linear"),
}


def radical_inverse(index: int, base: int) -> float:
    """Return the van der Corput radical inverse of ``index`` in ``base``: its digits mirrored after the point."""
    value, scale = 0.0, 1.0 / base
    while index > 0:
        index, digit = divmod(index, base)
        value += digit * scale
        scale /= base
    return value


@functools.lru_cache(maxsize=16)
def _halton_order(grid: int) -> tuple[int, ...]:
    cells = grid * grid
    order: list[int] = []
    seen: set[int] = set()
    index = 0
    # The Halton points are dense in the unit square, so every cell is reached after finitely
    # many points. The bound only guards against a bug.
    while len(order) < cells:
        if index > 1000 * cells:
            raise RuntimeError(f"the Halton sequence covered {len(order)} of {cells} cells after {index} points")
        column = int(radical_inverse(index, 2) * grid)
        row = int(radical_inverse(index, 3) * grid)
        cell = row * grid + column
        if cell not in seen:
            seen.add(cell)
            order.append(cell)
        index += 1
    return tuple(order)


def halton_order(grid: int) -> torch.Tensor:
    """Return the flat cell indices ``row * grid + column`` of a ``grid x grid`` grid in Halton order: ``[grid * grid]``.

    Points ``(x, y)`` of the Halton sequence in bases 2 and 3, starting at index 0, map to cell
    ``(floor(y * grid), floor(x * grid))``; a cell already visited is skipped.
    """
    if isinstance(grid, bool) or int(grid) != grid or grid < 1:
        raise ConfigError(f"grid={grid!r} is invalid; use a positive number of cells per side")
    return torch.tensor(_halton_order(int(grid)), dtype=torch.long)


def masked_fraction(progress: float, schedule: str) -> float:
    """Fraction of cells still masked after ``progress`` (in [0, 1]) of the steps: 1 at 0, 0 at 1.

    ``arccos``: ``arccos(x) / (pi / 2)``; ``cosine``: ``cos(pi / 2 * x)``.
    """
    if schedule == "arccos":
        return math.acos(min(1.0, max(0.0, progress))) / (math.pi / 2)
    if schedule == "cosine":
        return math.cos(math.pi / 2 * min(1.0, max(0.0, progress)))
    raise ConfigError(f"unknown reveal schedule '{schedule}'; use one of {', '.join(REVEAL_SCHEDULES)}")


def reveal_counts(num_cells: int, num_steps: int, schedule: str = "arccos") -> tuple[int, ...]:
    """Return how many cells each of ``num_steps`` steps reveals; they sum to ``num_cells``.

    After step ``i``, about ``num_cells * masked_fraction((i + 1) / num_steps)`` cells stay
    masked. The rounded counts move as little as needed to keep two rules. With no more steps
    than cells, every step reveals at least one cell. With more steps than cells, a step reveals
    at most one, so ``num_steps - num_cells`` steps reveal nothing.
    """
    if num_cells < 1 or num_steps < 1:
        raise ConfigError(f"cannot reveal {num_cells} cells in {num_steps} steps; both must be positive")
    min_count = 1 if num_steps <= num_cells else 0
    max_count = 1 if num_steps >= num_cells else num_cells
    counts, previous = [], num_cells
    for step in range(num_steps):
        later_steps = num_steps - 1 - step
        target = round(num_cells * masked_fraction((step + 1) / num_steps, schedule))
        # Keep the count in [min_count, max_count] and leave the later steps a feasible remainder.
        remaining = min(max(target, previous - max_count, later_steps * min_count), previous - min_count, later_steps * max_count)
        counts.append(previous - remaining)
        previous = remaining
    return tuple(counts)


def guidance_weights(cfg_weight: float, num_steps: int, ramp: str) -> tuple[float, ...]:
    """Return the guidance weight of each step: linear from 0 to ``cfg_weight``, or constant."""
    if ramp == "constant":
        return (float(cfg_weight),) * num_steps
    if ramp == "linear":
        if num_steps == 1:
            return (float(cfg_weight),)
        return tuple(float(cfg_weight) * step / (num_steps - 1) for step in range(num_steps))
    raise ConfigError(f"unknown guidance ramp '{ramp}'; use one of {', '.join(CFG_RAMPS)}")


def guided_logits(conditional: torch.Tensor, unconditional: torch.Tensor, weight: float) -> torch.Tensor:
    """Mix the logits for classifier-free guidance: ``(1 + w) * conditional - w * unconditional``, in float32 or wider."""
    dtype = torch.promote_types(conditional.dtype, torch.float32)
    return (1.0 + weight) * conditional.to(dtype) - weight * unconditional.to(dtype)


def resolve_labels(labels: Any, num_samples: int, num_classes: int, *, generator: torch.Generator, device: torch.device) -> torch.Tensor | None:
    """Turn ``labels`` into class ids ``[B]``, or None for unconditional sampling.

    ``labels`` is None (unconditional), ``"random"`` (uniform classes drawn with ``generator``),
    one class id for every sample, or a sequence or tensor of ``num_samples`` class ids.

    Raises:
        ConfigError: for a wrong count, a class id outside ``0..num_classes - 1`` or another value.
    """
    if labels is None:
        return None
    if isinstance(labels, str):
        if labels != "random":
            raise ConfigError(f"labels='{labels}' is invalid; use 'random', class ids, or None for unconditional samples")
        return torch.randint(0, num_classes, (num_samples,), generator=generator, device=generator.device).to(device)
    if isinstance(labels, bool):
        raise ConfigError(f"labels={labels!r} is invalid; pass class ids")
    if isinstance(labels, numbers.Integral) or (torch.is_tensor(labels) and labels.ndim == 0 and not labels.is_floating_point()):
        ids = torch.full((num_samples,), int(labels), dtype=torch.long)
    elif torch.is_tensor(labels) or isinstance(labels, Sequence) or hasattr(labels, "__array__"):
        ids = torch.as_tensor(labels).reshape(-1)
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise ConfigError(f"labels must be integer class ids, not {ids.dtype}")
        if ids.numel() != num_samples:
            raise ConfigError(f"{ids.numel()} labels were given for {num_samples} samples; pass one label per sample, one int for all, or 'random'")
        ids = ids.long()
    else:
        raise ConfigError(f"labels of type {type(labels).__name__} are invalid; pass class ids, 'random' or None")
    bad = ids[(ids < 0) | (ids >= num_classes)]
    if bad.numel():
        raise ConfigError(f"class id {int(bad[0])} is out of range; the model has classes 0..{num_classes - 1}")
    return ids.to(device)


def _source(model: MaskedGenerativeModel) -> MaskedGenerativeModel:
    return getattr(model, "base", model)


def _resolve_cells(model: MaskedGenerativeModel, seq_len: int | None) -> tuple[int, int]:
    """Return ``(grid, grid * grid)``; ``seq_len`` may only repeat the grid's number of cells."""
    cells = int(_source(model).num_image_tokens)
    grid = math.isqrt(cells)
    if seq_len is not None and seq_len != cells:
        raise ConfigError(
            f"seq_len={seq_len} does not fit the model's {grid}x{grid} token grid; image models always sample whole grids of {cells} tokens, "
            "so leave seq_len unset (it is the third positional argument of mgm2fp.sample: pass the budget as budget=)"
        )
    return grid, cells


@dataclass(frozen=True)
class _Decoding:
    """The validated options of one call."""

    order: str
    reveal_schedule: str
    temperature: float
    gumbel_temperature: float
    cfg_weight: float
    cfg_ramp: str


def _validate(defaults: MaskGITDefaults, *, order: str | None, reveal_schedule: str | None, temperature: float, gumbel_temperature: float | None, cfg_weight: float, cfg_ramp: str | None, guided_labels: bool) -> _Decoding:
    order = order or defaults.order
    if order not in ORDERS:
        raise ConfigError(f"unknown order '{order}'; use one of {', '.join(ORDERS)}")
    reveal_schedule = reveal_schedule or defaults.reveal_schedule
    if reveal_schedule not in REVEAL_SCHEDULES:
        raise ConfigError(f"unknown reveal schedule '{reveal_schedule}'; use one of {', '.join(REVEAL_SCHEDULES)}")
    cfg_ramp = cfg_ramp or defaults.cfg_ramp
    if cfg_ramp not in CFG_RAMPS:
        raise ConfigError(f"unknown guidance ramp '{cfg_ramp}'; use one of {', '.join(CFG_RAMPS)}")
    if not temperature >= 0:
        raise ConfigError(f"temperature={temperature} is invalid; use 0 (argmax) or a positive softmax temperature")
    if gumbel_temperature is not None and not gumbel_temperature >= 0:
        raise ConfigError(f"gumbel_temperature={gumbel_temperature} is invalid; use 0 or more")
    if gumbel_temperature is not None and order != "confidence":
        logger.warning("gumbel_temperature applies to the confidence order only; the %s order ignores it", order)
    if not cfg_weight >= 0:
        raise ConfigError(f"cfg_weight={cfg_weight} is invalid; use 0 (no guidance) or a positive guidance weight")
    if cfg_weight > 0 and not guided_labels:
        raise ConfigError(f"classifier-free guidance (cfg_weight={cfg_weight}) needs class labels; pass labels= (--labels) or set the weight to 0")
    return _Decoding(order, reveal_schedule, float(temperature), GUMBEL_TEMPERATURE if gumbel_temperature is None else float(gumbel_temperature), float(cfg_weight), cfg_ramp)


def sample_maskgit(
    model: MaskedGenerativeModel,
    *,
    num_samples: int,
    seq_len: int | None,
    schedule_plan: SchedulePlan,
    reuse: ReuseConfig,
    generator: torch.Generator,
    solver_options: SolverOptions | None = None,
    callback: StepCallback | None = None,
    defaults: MaskGITDefaults = FAMILY_DEFAULTS["halton-maskgit"],
    labels: Any = None,
    order: str | None = None,
    reveal_schedule: str | None = None,
    temperature: float = 1.0,
    gumbel_temperature: float | None = None,
    cfg_weight: float = 0.0,
    cfg_ramp: str | None = None,
) -> SampleResult:
    """Draw ``num_samples`` token grids; ``result.tokens`` is ``[B, grid * grid]`` with no mask code left.

    ``labels`` (None for unconditional, ``"random"``, one id or ``B`` ids) sets the classes.
    ``order`` (``halton`` or ``confidence``), ``cfg_ramp`` and ``reveal_schedule`` (``arccos``,
    ``cosine``) default to the family's rule. ``temperature`` is the softmax temperature of the
    token draws (0: argmax), ``gumbel_temperature`` the initial confidence noise of the
    confidence order (default 4.5). ``cfg_weight`` > 0 turns on classifier-free guidance.

    Raises:
        ConfigError: for an invalid option, labels or ``seq_len``.
    """
    grid, cells = _resolve_cells(model, seq_len)
    device = next(model.parameters()).device
    class_ids = resolve_labels(labels, num_samples, int(_source(model).num_classes), generator=generator, device=device)
    decoding = _validate(defaults, order=order, reveal_schedule=reveal_schedule, temperature=temperature, gumbel_temperature=gumbel_temperature, cfg_weight=cfg_weight, cfg_ramp=cfg_ramp, guided_labels=class_ids is not None)
    num_steps = schedule_plan.num_steps
    counts = reveal_counts(cells, num_steps, decoding.reveal_schedule)
    weights = guidance_weights(decoding.cfg_weight, num_steps, decoding.cfg_ramp)
    guided = decoding.cfg_weight > 0
    if num_steps > cells:
        logger.warning("%d steps for %d cells: the %d steps that reveal nothing run no forward pass and spend nothing", num_steps, cells, counts.count(0))
    halton = halton_order(grid).to(device) if decoding.order == "halton" else None

    runner = DenoisingRunner(model, schedule_plan, reuse, solver_options, callback=callback)
    tokens = torch.full((num_samples, cells), model.mask_token_id, dtype=torch.long, device=device)  # [B, N]
    started = time.perf_counter()
    revealed_so_far = 0
    for step in range(num_steps):
        if counts[step] == 0:
            runner.skip(step=step, reveal=0)
            runner.end_step(revealed=0)
            continue
        logits = _step_logits(runner, tokens, class_ids, step=step, weight=weights[step] if guided else None)  # [B, N, V]
        if halton is not None:
            positions = halton[revealed_so_far : revealed_so_far + counts[step]].expand(num_samples, -1)  # [B, k]
            chosen = _draw(logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1])), decoding.temperature, generator, model.mask_token_id)  # [B, k]
        else:
            positions, chosen = _most_confident(logits, tokens, counts[step], decoding, step=step, num_steps=num_steps, generator=generator, mask_token_id=model.mask_token_id)
        tokens = tokens.scatter(1, positions, chosen)
        revealed_so_far += counts[step]
        runner.end_step(revealed=num_samples * counts[step])

    result = runner.result(tokens, family=_source(model).family, seconds=time.perf_counter() - started)
    result.labels = class_ids
    return result


def _step_logits(runner: DenoisingRunner, tokens: torch.Tensor, class_ids: torch.Tensor | None, *, step: int, weight: float | None) -> torch.Tensor:
    """Run one step's forward pass; with guidance, one batch of conditional then unconditional rows."""
    if weight is None:
        return runner.forward(tokens, class_ids, None, step=step)
    batch = tokens.shape[0]
    drop = torch.arange(2 * batch, device=tokens.device) >= batch  # [2B], True for the unconditional half
    both = runner.forward(torch.cat([tokens, tokens]), torch.cat([class_ids, class_ids]), drop, step=step, cfg_weight=weight)  # [2B, N, V]
    conditional, unconditional = both.chunk(2)
    return guided_logits(conditional, unconditional, weight)


def _draw(logits: torch.Tensor, temperature: float, generator: torch.Generator, mask_token_id: int) -> torch.Tensor:
    """Draw one code per cell of ``logits`` ``[B, k, V]`` (argmax at temperature 0), never the mask code: ``[B, k]``."""
    batch, cells, vocab = logits.shape
    flat = logits.reshape(-1, vocab)
    if temperature == 0:
        flat = flat.clone()
        flat[:, mask_token_id] = float("-inf")
        return flat.argmax(dim=-1).view(batch, cells)
    return sample_categorical(flat / temperature, generator=generator, banned_token_id=mask_token_id).view(batch, cells)


def _most_confident(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    count: int,
    decoding: _Decoding,
    *,
    step: int,
    num_steps: int,
    generator: torch.Generator,
    mask_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a code for every cell and return the ``count`` masked cells of highest noisy confidence, with their codes.

    Confidence is ``log p(code) + g * Gumbel`` with ``g = gumbel_temperature * (1 - step / num_steps)``;
    visible cells get minus infinity. Returns positions and codes, each ``[B, count]``.
    """
    drawn = _draw(logits, decoding.temperature, generator, mask_token_id)  # [B, N]
    log_probs = torch.log_softmax(logits.to(torch.float64), dim=-1)  # [B, N, V]
    confidence = log_probs.gather(-1, drawn[..., None]).squeeze(-1)  # [B, N]
    scale = decoding.gumbel_temperature * (1.0 - step / num_steps)
    if scale > 0:
        uniform = torch.rand(confidence.shape, generator=generator, device=confidence.device, dtype=torch.float64)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0)).clamp_min(1e-20))
        confidence = confidence + scale * gumbel
    confidence = confidence.masked_fill(tokens != mask_token_id, float("-inf"))
    positions = confidence.topk(count, dim=1).indices  # [B, count]
    return positions, drawn.gather(1, positions)


for _family, _defaults in FAMILY_DEFAULTS.items():
    register_sampler(_family, functools.partial(sample_maskgit, defaults=_defaults))
