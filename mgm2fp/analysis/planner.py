"""Propose a layer plan (pre / fixed-point range / post) from a block-to-block CKA matrix.

The rule, with block indices 0-indexed:

1. Boundary. Every split of the blocks into an early group ``0..b-1`` and a late group
   ``b..n-1`` with at least ``min_group_size`` blocks on each side gets the score
   ``mean within-group CKA - mean cross-group CKA`` (within-group pairs of both groups pooled,
   the diagonal left out). The split with the highest score is the boundary. The lowest
   consecutive CKA ``CKA(k, k + 1)`` is reported beside it as a second view.
2. Fixed-point group. The group with the higher mean within-group CKA (the tighter one, whose
   blocks compute the most similar representations) gives the fixed-point range.
   ``fixed_point_group`` can force the early or late group instead.
3. Pre and post. The first ``num_pre`` blocks are pre blocks and the last ``num_post`` blocks are
   post blocks. The fixed-point range is the chosen group minus those blocks, and every other
   block is dropped.
4. Init. The shared block starts from the ``init`` block of the range: ``first`` (default),
   ``middle``, ``last``, ``mean``, a block index, or ``central``, the block with the highest mean
   CKA to the rest of the range.

On MDLM-owt, arXiv 2605.31215 reports two groups, blocks 0-4 (mean CKA 0.808) and 5-11 (0.998),
with cross-group CKA 0.060. With one pre and one post block this rule gives pre 0, fixed point
5-10 initialised from block 5, post 11, which keeps the blocks of the paper's mapping.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from mgm2fp.errors import ConfigError, LayerPlanError
from mgm2fp.layer_plan import LayerPlan, format_range, parse_init

logger = logging.getLogger(__name__)

FIXED_POINT_GROUPS = ("tightest", "late", "early")
# Below this split score the two groups are barely more similar inside than across. The value is a
# judgement call, so it only flags the plan in the reasoning and never changes the plan.
WEAK_BOUNDARY_SCORE = 0.1


@dataclass(frozen=True)
class BlockGroup:
    """A contiguous range of blocks and how similar their outputs are."""

    first: int
    last: int
    mean_cka: float  # mean over pairs of distinct blocks (1.0 for a single block)
    min_cka: float

    @property
    def blocks(self) -> tuple[int, ...]:
        return tuple(range(self.first, self.last + 1))

    def to_dict(self) -> dict[str, Any]:
        return {"blocks": format_range(self.blocks), "first": self.first, "last": self.last, "mean_cka": self.mean_cka, "min_cka": self.min_cka}


@dataclass
class PlanProposal:
    """A layer plan with the scores it came from and the reasoning in words."""

    plan: LayerPlan
    boundary: int | None  # first block of the late group; None when the model is too shallow to split
    groups: list[BlockGroup]
    reasoning: list[str]
    scores: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return ``LayerPlan.to_dict()`` plus ``reasoning`` and ``scores`` (what ``plan.json`` stores)."""
        return {**self.plan.to_dict(), "reasoning": list(self.reasoning), "scores": self.scores}


def split_scores(cka: torch.Tensor, *, min_group_size: int = 2) -> dict[int, float]:
    """Score every split ``0..b-1 | b..n-1``: pooled mean within-group CKA minus mean cross-group CKA.

    Returns a dict from ``b`` (the first block of the late group) to the score; it is empty when
    ``n < 2 * min_group_size``.
    """
    cka = _symmetric(cka)
    n = cka.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    scores = {}
    for boundary in range(min_group_size, n - min_group_size + 1):
        early = torch.arange(n) < boundary  # [n]
        same_group = (early[:, None] == early[None, :]) & off_diagonal  # [n, n]
        cross = early[:, None] != early[None, :]
        scores[boundary] = float(cka[same_group].mean() - cka[cross].mean())
    return scores


def group_statistics(cka: torch.Tensor, first: int, last: int) -> BlockGroup:
    """Return the mean and minimum CKA over pairs of distinct blocks in ``first..last``."""
    cka = _symmetric(cka)
    block = cka[first : last + 1, first : last + 1]
    size = last - first + 1
    if size == 1:
        return BlockGroup(first, last, 1.0, 1.0)
    values = block[~torch.eye(size, dtype=torch.bool)]
    return BlockGroup(first, last, float(values.mean()), float(values.min()))


def propose_plan(
    cka: torch.Tensor,
    *,
    num_pre: int = 1,
    num_post: int = 1,
    init: str | int = "first",
    fixed_point_group: str = "tightest",
    min_group_size: int = 2,
) -> PlanProposal:
    """Apply the rule of this module to ``cka`` ``[n, n]`` and return the plan with its reasoning.

    Raises:
        ConfigError: for a matrix that is not square and finite, or an invalid option.
        LayerPlanError: when the pre and post blocks leave no block for the fixed-point range.
    """
    cka = _symmetric(cka)
    n = cka.shape[0]
    check_plan_options(n, num_pre=num_pre, num_post=num_post, fixed_point_group=fixed_point_group, min_group_size=min_group_size)
    reasoning: list[str] = []
    scores: dict[str, Any] = {
        "rule": {"num_pre": num_pre, "num_post": num_post, "fixed_point_group": fixed_point_group, "min_group_size": min_group_size, "init": init},
        "consecutive_cka": cka.diagonal(offset=1).tolist(),
    }

    by_split = split_scores(cka, min_group_size=min_group_size)
    scores["split_scores"] = {str(boundary): score for boundary, score in by_split.items()}
    boundary = max(by_split, key=by_split.get) if by_split else None
    if boundary is None:
        groups = [group_statistics(cka, 0, n - 1)]
        reasoning.append(f"{n} blocks cannot be split into two groups of at least {min_group_size}; all blocks form one group.")
    else:
        groups = [group_statistics(cka, 0, boundary - 1), group_statistics(cka, boundary, n - 1)]
        scores["boundary"] = _describe_boundary(cka, boundary, by_split, reasoning)
    _describe_weakest_link(cka, boundary, scores, reasoning)
    scores["groups"] = [group.to_dict() for group in groups]

    chosen = _choose_group(groups, fixed_point_group, reasoning)
    first, last = _fixed_point_range(chosen, n, num_pre=num_pre, num_post=num_post)
    init_value = _resolve_init(cka, init, first, last)
    plan = LayerPlan(pre=tuple(range(num_pre)), fixed_point=tuple(range(first, last + 1)), post=tuple(range(n - num_post, n)), num_source_blocks=n, init=init_value)
    scores["fixed_point_range"] = _describe_range(cka, plan, reasoning)
    logger.info("proposed layer plan: %s", plan.describe())
    return PlanProposal(plan=plan, boundary=boundary, groups=groups, reasoning=reasoning, scores=scores)


def _symmetric(cka: torch.Tensor) -> torch.Tensor:
    cka = torch.as_tensor(cka, dtype=torch.float64)
    if cka.ndim != 2 or cka.shape[0] != cka.shape[1] or cka.shape[0] == 0:
        raise ConfigError(f"a CKA matrix must be square [n, n]; got shape {tuple(cka.shape)}")
    if not torch.isfinite(cka).all():
        raise ConfigError("the CKA matrix contains NaN or infinite values; rerun the analysis on more varied data")
    return (cka + cka.T) / 2


def check_plan_options(n: int, *, num_pre: int, num_post: int, fixed_point_group: str = "tightest", min_group_size: int = 2) -> None:
    """Reject planner options that cannot work for ``n`` blocks, before any analysis runs.

    Raises:
        ConfigError: for negative counts, an unknown group or a minimum group size below 1.
        LayerPlanError: when the pre and post blocks leave no block for the fixed-point range.
    """
    if num_pre < 0 or num_post < 0:
        raise ConfigError(f"--num-pre {num_pre} and --num-post {num_post} must be >= 0")
    if num_pre + num_post >= n:
        raise LayerPlanError(f"--num-pre {num_pre} plus --num-post {num_post} leave none of the {n} blocks for the fixed-point range; lower them")
    if fixed_point_group not in FIXED_POINT_GROUPS:
        raise ConfigError(f"unknown fixed-point group '{fixed_point_group}'; use one of {', '.join(FIXED_POINT_GROUPS)}")
    if min_group_size < 1:
        raise ConfigError(f"minimum group size {min_group_size} is invalid; give 1 or more")


def _describe_boundary(cka: torch.Tensor, boundary: int, by_split: dict[int, float], reasoning: list[str]) -> dict[str, Any]:
    n = cka.shape[0]
    early = torch.arange(n) < boundary
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    within = float(cka[(early[:, None] == early[None, :]) & off_diagonal].mean())
    cross = float(cka[early[:, None] != early[None, :]].mean())
    others = {b: score for b, score in by_split.items() if b != boundary}
    sentence = (
        f"Strongest boundary: between blocks {boundary - 1} and {boundary}. Splitting there gives a mean "
        f"within-group CKA of {within:.3f} against {cross:.3f} across the groups (score {by_split[boundary]:.3f}"
    )
    if others:
        runner_up = max(others, key=others.get)
        sentence += f"; the next best split, between blocks {runner_up - 1} and {runner_up}, scores {others[runner_up]:.3f}"
    reasoning.append(sentence + ").")
    if by_split[boundary] < WEAK_BOUNDARY_SCORE:
        reasoning.append(
            f"The boundary is weak (score below {WEAK_BOUNDARY_SCORE}): the blocks do not form two distinct groups, "
            "so the choice of groups rests on small differences. Compare the plan with a hand-picked one."
        )
        logger.warning("weak CKA boundary (split score %.3f); the proposed plan rests on small differences", by_split[boundary])
    return {"first_block_of_late_group": boundary, "split_score": by_split[boundary], "mean_within_cka": within, "mean_cross_cka": cross}


def _describe_weakest_link(cka: torch.Tensor, boundary: int | None, scores: dict[str, Any], reasoning: list[str]) -> None:
    consecutive = cka.diagonal(offset=1)  # [n - 1]
    if consecutive.numel() == 0:
        return
    weakest = int(consecutive.argmin())
    median = float(consecutive.median())
    scores["lowest_consecutive_cka"] = {"blocks": [weakest, weakest + 1], "cka": float(consecutive[weakest]), "median_consecutive_cka": median}
    sentence = f"Lowest consecutive CKA: {float(consecutive[weakest]):.3f} between blocks {weakest} and {weakest + 1} (median over consecutive pairs {median:.3f})"
    if boundary is None:
        reasoning.append(sentence + ".")
    elif weakest + 1 == boundary:
        reasoning.append(sentence + ", at the same boundary.")
    else:
        reasoning.append(sentence + ", which is not at the split boundary; the plan follows the split score.")


def _choose_group(groups: list[BlockGroup], fixed_point_group: str, reasoning: list[str]) -> BlockGroup:
    for group in groups:
        reasoning.append(f"Group {format_range(group.blocks)}: mean CKA {group.mean_cka:.3f}, min {group.min_cka:.3f}.")
    if len(groups) == 1:
        return groups[0]
    early, late = groups
    if fixed_point_group == "early":
        chosen, reason = early, "the early group, as requested"
    elif fixed_point_group == "late":
        chosen, reason = late, "the late group, as requested"
    else:
        # A tie goes to the late group, where arXiv 2605.31215 found the tight group in MDLM-owt.
        chosen = early if early.mean_cka > late.mean_cka else late
        reason = "the tighter group (higher mean CKA)"
    reasoning.append(f"The fixed-point range comes from group {format_range(chosen.blocks)}, {reason}.")
    return chosen


def _fixed_point_range(group: BlockGroup, n: int, *, num_pre: int, num_post: int) -> tuple[int, int]:
    first = max(group.first, num_pre)
    last = min(group.last, n - 1 - num_post)
    if first > last:
        raise LayerPlanError(
            f"with --num-pre {num_pre} and --num-post {num_post}, no block of group {format_range(group.blocks)} is left for the fixed-point range; "
            "lower --num-pre or --num-post, or choose the other group with --fixed-point-group"
        )
    return first, last


def _resolve_init(cka: torch.Tensor, init: str | int, first: int, last: int) -> str | int:
    if isinstance(init, str) and init.strip().lower() == "central":
        block = cka[first : last + 1, first : last + 1]  # [R, R]
        size = last - first + 1
        if size == 1:
            return first
        mean_to_others = (block.sum(dim=1) - block.diagonal()) / (size - 1)  # [R]
        return first + int(mean_to_others.argmax())
    return parse_init(init)


def _describe_range(cka: torch.Tensor, plan: LayerPlan, reasoning: list[str]) -> dict[str, Any]:
    first, last = plan.fixed_point[0], plan.fixed_point[-1]
    statistics = group_statistics(cka, first, last)
    init_blocks = list(plan.init_blocks)
    others = [index for index in plan.fixed_point if index not in init_blocks]
    init_to_range = float(cka[init_blocks][:, others].mean()) if others else None
    dropped = sorted(set(range(plan.num_source_blocks)) - set(plan.pre) - set(plan.fixed_point) - set(plan.post))

    reasoning.append(
        f"Plan: pre {format_range(plan.pre)} | fixed point {format_range(plan.fixed_point)} | post {format_range(plan.post)}; "
        f"dropped: {format_range(dropped) if dropped else 'none'}."
    )
    sentence = (
        f"The shared block starts from block(s) {format_range(init_blocks)} (init {plan.init}). "
        f"Within the fixed-point range the mean CKA is {statistics.mean_cka:.3f} (min {statistics.min_cka:.3f})"
    )
    if others:
        sentence += f", and the init block's mean CKA to the other blocks of the range is {init_to_range:.3f}"
    reasoning.append(sentence + ".")
    return {**statistics.to_dict(), "init_blocks": init_blocks, "init_mean_cka_to_range": init_to_range, "dropped": dropped}
