"""``python -m mathagent ...`` = the ``mathagent`` console script."""

from mathagent.cli import main

main()
