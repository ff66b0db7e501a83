"""The bodies of the ``mathagent`` commands (``mathagent.cli`` holds only their options)."""
