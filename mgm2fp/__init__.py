"""mgm2fp: convert pre-trained masked generative models into fixed-point MGMs (arXiv 2605.31215)."""

from __future__ import annotations

__version__ = "0.1.0"

from mgm2fp.errors import Mgm2fpError  # noqa: E402
from mgm2fp.families.base import MaskedGenerativeModel  # noqa: E402
from mgm2fp.fixed_point.loader import save_pretrained  # noqa: E402
from mgm2fp.fixed_point.model import FixedPointMGM  # noqa: E402
from mgm2fp.layer_plan import LayerPlan, make_plan  # noqa: E402
from mgm2fp.loading import load  # noqa: E402
from mgm2fp.surgery import convert  # noqa: E402
from mgm2fp.sampling import SampleResult, register_sampler, sample  # noqa: E402
from mgm2fp.training.engine import finetune  # noqa: E402

__all__ = [
    "FixedPointMGM",
    "LayerPlan",
    "MaskedGenerativeModel",
    "Mgm2fpError",
    "SampleResult",
    "convert",
    "finetune",
    "load",
    "make_plan",
    "register_sampler",
    "sample",
    "save_pretrained",
    "__version__",
]
