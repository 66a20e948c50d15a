"""`python -m selfheal.cli ...`: the same as the `selfheal` console script."""

from selfheal.cli import main

main()
