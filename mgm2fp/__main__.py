"""Allow ``python -m mgm2fp``."""

from mgm2fp.cli import main

main()
