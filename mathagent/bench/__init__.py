"""``mathagent bench ...``: each benchmark measures its contestants side by side in one run and prints the ratios."""
