"""Fixed-point models: injection, solver and the FixedPointMGM module."""

from mgm2fp.fixed_point.model import FixedPointBlock, FixedPointMGM, FixedPointOutput
from mgm2fp.fixed_point.solver import SolverResult, picard

__all__ = ["FixedPointBlock", "FixedPointMGM", "FixedPointOutput", "SolverResult", "picard"]
