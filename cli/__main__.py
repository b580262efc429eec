"""`python -m effv2_cli ...` is `effv2 ...` (what torchrun and subprocesses launch)."""

from . import main

main()
