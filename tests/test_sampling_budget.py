"""Budget planning: steps and iterations from a budget, schedules, and invalid budgets."""

from __future__ import annotations

import pytest

import mgm2fp
from mgm2fp.errors import ConfigError
from mgm2fp.sampling.budget import allocate_iterations, plan_budget
from conftest import MDLM_TINY


@pytest.fixture(scope="module")
def source():
    return mgm2fp.load(MDLM_TINY)


@pytest.fixture(scope="module")
def fixed_point(source):
    # 1 pre block, blocks 1-4 shared (default depth 4), 1 post block: a step costs 2 + N.
    return mgm2fp.convert(source, share_layers="1-4")


def test_source_steps_from_budget(source):
    plan = plan_budget(source, budget=48)
    assert plan.num_steps == 8
    assert plan.step_costs == (6,) * 8
    assert plan.iterations is None
    assert plan.total_cost == 48


def test_source_budget_not_a_multiple(source):
    plan = plan_budget(source, budget=50)
    assert plan.num_steps == 8
    assert plan.total_cost == 48


def test_source_steps_override(source):
    plan = plan_budget(source, budget=48, steps=5)
    assert plan.num_steps == 5
    assert plan.total_cost == 30
    assert plan_budget(source, steps=3).total_cost == 18


def test_source_invalid_budgets(source):
    with pytest.raises(ConfigError, match="budget 5 is below the cost of one denoising step"):
        plan_budget(source, budget=5)
    with pytest.raises(ConfigError, match="9 steps cost 54 block forward passes, more than the budget 48"):
        plan_budget(source, budget=48, steps=9)
    with pytest.raises(ConfigError, match="num_iterations=3 applies only to fixed-point models"):
        plan_budget(source, budget=48, num_iterations=3)


def test_fixed_point_default_split(fixed_point):
    plan = plan_budget(fixed_point, budget=48)
    assert plan.num_steps == 8  # as many steps as the source model at its default depth
    assert sum(plan.iterations) == 48 - 8 * 2
    assert plan.step_costs == tuple(2 + count for count in plan.iterations)
    assert plan.total_cost == 48


def test_fixed_point_steps_override(fixed_point):
    plan = plan_budget(fixed_point, budget=48, steps=4, schedule="fixed")
    assert plan.iterations == (10, 10, 10, 10)
    assert plan.total_cost == 48


def test_fixed_point_num_iterations(fixed_point):
    plan = plan_budget(fixed_point, budget=48, num_iterations=2, schedule="fixed")
    assert plan.num_steps == 12
    assert plan.iterations == (2,) * 12
    plan = plan_budget(fixed_point, steps=3, num_iterations=5, schedule="fixed")
    assert plan.iterations == (5, 5, 5)
    assert plan.budget is None


def test_fixed_point_small_budget_takes_one_step(fixed_point):
    plan = plan_budget(fixed_point, budget=4)
    assert plan.num_steps == 1
    assert plan.iterations == (2,)


@pytest.mark.parametrize("budget", range(3, 70, 7))
@pytest.mark.parametrize("schedule", ["decreasing", "fixed", "increasing"])
def test_fixed_point_plan_within_budget(fixed_point, budget, schedule):
    plan = plan_budget(fixed_point, budget=budget, schedule=schedule)
    assert plan.total_cost <= budget
    assert min(plan.iterations) >= 1
    # An iteration costs one block pass here, so the plan spends the whole budget.
    assert plan.total_cost == budget


def test_fixed_point_invalid_budgets(fixed_point):
    with pytest.raises(ConfigError, match="budget 2 cannot pay for 1 steps"):
        plan_budget(fixed_point, budget=2)
    with pytest.raises(ConfigError, match="raise the budget to 30"):
        plan_budget(fixed_point, budget=20, steps=10)
    with pytest.raises(ConfigError, match="use at most 3 iterations"):
        plan_budget(fixed_point, budget=20, steps=4, num_iterations=5)


def test_plan_rejects_bad_arguments(fixed_point):
    with pytest.raises(ConfigError, match="neither a budget nor a number of steps"):
        plan_budget(fixed_point)
    with pytest.raises(ConfigError, match="unknown schedule 'cosine'"):
        plan_budget(fixed_point, budget=48, schedule="cosine")
    with pytest.raises(ConfigError, match="budget=0 is invalid"):
        plan_budget(fixed_point, budget=0)
    with pytest.raises(ConfigError, match="steps=2.5 is invalid"):
        plan_budget(fixed_point, steps=2.5)


def test_allocate_fixed_gives_remainder_to_first_steps():
    assert allocate_iterations(10, 4, "fixed") == (3, 3, 2, 2)


def test_allocate_decreasing_ramp():
    counts = allocate_iterations(40, 8, "decreasing")
    assert sum(counts) == 40
    assert list(counts) == sorted(counts, reverse=True)
    assert counts[0] > counts[-1]
    # The extra iterations follow weights from 3 down to 1.
    assert (counts[0] - 1) == pytest.approx(3 * (counts[-1] - 1), abs=1.5)


def test_allocate_increasing_mirrors_decreasing():
    for total, steps in [(40, 8), (17, 5), (9, 9), (100, 3)]:
        assert allocate_iterations(total, steps, "increasing") == tuple(reversed(allocate_iterations(total, steps, "decreasing")))


@pytest.mark.parametrize("schedule", ["decreasing", "fixed", "increasing"])
def test_allocate_sums_and_monotone(schedule):
    for steps in range(1, 12):
        for total in range(steps, steps * 7):
            counts = allocate_iterations(total, steps, schedule)
            assert sum(counts) == total
            assert min(counts) >= 1
            ordered = sorted(counts, reverse=schedule != "increasing")
            assert list(counts) == ordered


def test_allocate_needs_one_iteration_per_step():
    with pytest.raises(ConfigError, match="3 iterations cannot cover 4 steps"):
        allocate_iterations(3, 4)
