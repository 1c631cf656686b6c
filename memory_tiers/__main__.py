"""`python -m memory_tiers` runs the CLI."""

from .cli import main

main()
