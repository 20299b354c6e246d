"""Import every built-in sampler so that each registers itself."""

from mgm2fp.sampling import mdlm  # noqa: F401
from mgm2fp.sampling import maskgit  # noqa: F401
