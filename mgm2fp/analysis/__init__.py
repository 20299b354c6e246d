"""Layer analysis: linear CKA between block outputs and an automatic layer plan (``mgm2fp analyze``).

arXiv 2605.31215 chose its layer mapping by hand after a CKA analysis. This package computes the
same analysis with bounded memory and turns it into a :class:`~mgm2fp.layer_plan.LayerPlan` by an
explicit rule (see :mod:`mgm2fp.analysis.planner`).
"""

from __future__ import annotations

from mgm2fp.analysis.cka import SampledCKA, StreamingCKA, linear_cka
from mgm2fp.analysis.data import load_token_sequences
from mgm2fp.analysis.noising import NoisingScheme, noising_scheme, register_noising_scheme
from mgm2fp.analysis.pipeline import AnalysisOutputs, read_analysis_tokens, read_plan, save_analysis
from mgm2fp.analysis.planner import PlanProposal, propose_plan, split_scores
from mgm2fp.analysis.similarity import DEFAULT_TIMESTEPS, LayerSimilarity, analyze_layers, parse_timesteps

__all__ = [
    "AnalysisOutputs",
    "DEFAULT_TIMESTEPS",
    "LayerSimilarity",
    "NoisingScheme",
    "PlanProposal",
    "SampledCKA",
    "StreamingCKA",
    "analyze_layers",
    "linear_cka",
    "load_token_sequences",
    "noising_scheme",
    "parse_timesteps",
    "propose_plan",
    "read_analysis_tokens",
    "read_plan",
    "register_noising_scheme",
    "save_analysis",
    "split_scores",
]
