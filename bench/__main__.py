"""`python -m bench run`: see bench.runner."""

from bench.runner import main

main()
