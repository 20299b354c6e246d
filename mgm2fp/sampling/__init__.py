"""Budgeted sampling from masked generative models and their fixed-point versions (arXiv 2605.31215).

:func:`sample` plans the budget (:mod:`.budget`), picks the family's sampler from the registry
(:mod:`.registry`) and returns a :class:`SampleResult`. Family samplers run the model through
:class:`DenoisingRunner`, which warm-starts the solver (:mod:`.reuse`) and counts the budget.
"""

from mgm2fp.sampling.api import sample, sample_in_batches
from mgm2fp.sampling.budget import SCHEDULES, SchedulePlan, allocate_iterations, plan_budget
from mgm2fp.sampling.categorical import sample_categorical, top_p_filter
from mgm2fp.sampling.registry import get_sampler, register_sampler, samplers, sampling_family
from mgm2fp.sampling.result import SampleResult, StepStats
from mgm2fp.sampling.reuse import REUSE_MODES, ReuseConfig, three_state_gamma, warm_start_weight
from mgm2fp.sampling.runner import DenoisingRunner, SolverOptions

__all__ = [
    "DenoisingRunner",
    "REUSE_MODES",
    "ReuseConfig",
    "SCHEDULES",
    "SampleResult",
    "SchedulePlan",
    "SolverOptions",
    "StepStats",
    "allocate_iterations",
    "get_sampler",
    "plan_budget",
    "register_sampler",
    "sample",
    "sample_categorical",
    "sample_in_batches",
    "samplers",
    "sampling_family",
    "three_state_gamma",
    "top_p_filter",
    "warm_start_weight",
]
