"""The rule that keeps a frontend's housekeeping out of agent episodes and out of training.

Chat frontends send requests of their own besides the user's messages: Open WebUI asks the chat
model for a title, tags and follow-up suggestions after each answer (unless a separate "task
model" is configured). Run as math problems they cost a whole agent episode each, answer with
code instead of a title, and would land in the trajectory stream the trainer samples from.

A request is housekeeping when its last user message carries a known frontend's task-prompt
signature. Such a request is answered by plain generation (no tools, no sandbox, no trajectory)
even when it names the agent's model id, in at most :data:`MAX_TOKENS` tokens. Signatures, checked against the frontend's source:

- Open WebUI (``backend/open_webui/config.py``, every ``DEFAULT_*_GENERATION_PROMPT_TEMPLATE``:
  title, tags, follow-ups, search queries, autocomplete, image prompt): the message starts with
  ``### Task:`` and holds the conversation inside ``<chat_history>`` ... ``</chat_history>``.

The better setup still is to point the frontend's task model at ``<public id>-plain``
(README, "Use it from Open WebUI"): then no request needs recognising at all.
"""

from __future__ import annotations

# The reply of a housekeeping request: Open WebUI parses a small JSON object (a title, up to six
# tags, three to five follow-up questions: well under 128 tokens) but asks up to 1000 tokens (the
# title) or sets no limit. A small model that rambles would otherwise run to the server's turn
# limit: SmolLM2 wrote 384 tokens of code for the tags prompt, minutes on a loaded 2-core machine.
MAX_TOKENS = 128


def housekeeping_kind(message: str) -> str | None:
    """The frontend task ``message`` is a prompt of, or None when it is a user's message."""
    head = message.lstrip()
    if head.startswith("### Task:") and "<chat_history>" in message and "</chat_history>" in message:
        return "open-webui task"
    return None
