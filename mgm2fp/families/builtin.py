"""Import every built-in family so that each registers itself."""

from mgm2fp.families import mdlm_loader  # noqa: F401
from mgm2fp.fixed_point import loader  # noqa: F401
from mgm2fp.families import halton_maskgit  # noqa: F401
from mgm2fp.families import maskgit_v1  # noqa: F401
