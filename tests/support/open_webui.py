"""The housekeeping requests Open WebUI sends to a chat model, as it builds them.

Templates: Open WebUI's defaults (``backend/open_webui/config.py``: ``DEFAULT_TITLE_GENERATION_PROMPT_TEMPLATE``,
``DEFAULT_TAGS_GENERATION_PROMPT_TEMPLATE``, ``DEFAULT_FOLLOW_UP_GENERATION_PROMPT_TEMPLATE``), of
the 0.6-0.12 line the issue was tried with (the "3-5 word title" form) and of the newest one.
``{{MESSAGES:END:n}}`` is replaced by the last n messages as ``ROLE: content`` lines
(``utils/task.py``); the request is ``{"model", "messages": [one user message], "stream": false}``
plus ``max_completion_tokens`` (the task model's max_tokens, 1000 by default) for the title
(``routers/tasks.py``); Open WebUI strips its ``metadata`` before it forwards the request.
"""

from __future__ import annotations

from typing import Any

TITLE_0_6 = """### Task:
Generate a concise, 3-5 word title with an emoji summarizing the chat history.
### Guidelines:
- The title should clearly represent the main theme or subject of the conversation.
- Use emojis that enhance understanding of the topic, but avoid quotation marks or special formatting.
- Write the title in the chat's primary language; default to English if multilingual.
- Prioritize accuracy over excessive creativity; keep it clear and simple.
### Output:
JSON format: { "title": "your concise title here" }
### Examples:
- { "title": "📉 Stock Market Trends" },
- { "title": "🍪 Perfect Chocolate Chip Recipe" },
- { "title": "Evolution of Music Streaming" },
- { "title": "Remote Work Productivity Tips" },
- { "title": "Artificial Intelligence in Healthcare" },
- { "title": "🎮 Video Game Development Insights" }
### Chat History:
<chat_history>
{{MESSAGES:END:2}}
</chat_history>"""

TITLE_NEW = """### Task:
Generate a concise title summarizing the chat history.
### Guidelines:
- The title should clearly represent the main theme or subject of the conversation.
- Keep it short: 2-4 words is best.
- Do not use emojis, quotation marks, or special formatting.
- Write the title in the chat's primary language; default to English if multilingual.
- Prioritize accuracy over creativity.
- Your entire response must consist solely of the JSON object, without any introductory or concluding text.
- The output must be a single, raw JSON object, without any markdown code fences or other encapsulating text.
- Ensure no conversational text, affirmations, or explanations precede or follow the raw JSON output, as this will cause direct parsing failure.
### Output:
JSON format: { "title": "your concise title here" }
### Examples:
- { "title": "Stock Trends" },
- { "title": "Chocolate Chip Cookies" },
- { "title": "Music Streaming" },
- { "title": "Remote Work" }
### Chat History:
<chat_history>
{{MESSAGES:END:2}}
</chat_history>"""

TAGS = """### Task:
Generate 1-3 broad tags categorizing the main themes of the chat history, along with 1-3 more specific subtopic tags.

### Guidelines:
- Start with high-level domains (e.g. Science, Technology, Philosophy, Arts, Politics, Business, Health, Sports, Entertainment, Education)
- Consider including relevant subfields/subdomains if they are strongly represented throughout the conversation
- If content is too short (less than 3 messages) or too diverse, use only ["General"]
- Use the chat's primary language; default to English if multilingual
- Prioritize accuracy over specificity

### Output:
JSON format: { "tags": ["tag1", "tag2", "tag3"] }

### Chat History:
<chat_history>
{{MESSAGES:END:6}}
</chat_history>"""

FOLLOW_UPS = """### Task:
Suggest 3-5 relevant follow-up questions or prompts that the user might naturally ask next in this conversation as a **user**, based on the chat history, to help continue or deepen the discussion.
### Guidelines:
- Write all follow-up questions from the user’s point of view, directed to the assistant.
- Make questions concise, clear, and directly related to the discussed topic(s).
- Only suggest follow-ups that make sense given the chat content and do not repeat what was already covered.
- If the conversation is very short or not specific, suggest more general (but relevant) follow-ups the user might ask.
- Use the conversation's primary language; default to English if multilingual.
- Response must be a JSON object with a "follow_ups" key containing an array of strings, no extra text or formatting.
### Output:
JSON format: { "follow_ups": ["Question 1?", "Question 2?", "Question 3?"] }
### Chat History:
<chat_history>
{{MESSAGES:END:6}}
</chat_history>"""

CHAT = [
    {"role": "user", "content": "What is 17 * 23?"},
    {"role": "assistant", "content": "```python\nprint(17 * 23)\n```\n```output\n391\n```\nThe answer is $\\boxed{391}$."},
]


def fill(template: str, messages: list[dict[str, str]]) -> str:
    """Replace ``{{MESSAGES:END:n}}`` as Open WebUI does: the last n messages, ``ROLE: content``."""
    for n in (2, 6):
        key = "{{MESSAGES:END:" + str(n) + "}}"
        if key in template:
            template = template.replace(key, "\n".join(f"{m['role'].upper()}: {m['content']}" for m in messages[-n:]))
    return template


def requests(model: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, request body) of every housekeeping request after the exchange in :data:`CHAT`."""
    one = lambda t: [{"role": "user", "content": fill(t, CHAT)}]  # noqa: E731
    return [
        ("title (0.6-0.12)", {"model": model, "messages": one(TITLE_0_6), "stream": False, "max_completion_tokens": 1000}),
        ("title (newest)", {"model": model, "messages": one(TITLE_NEW), "stream": False, "max_completion_tokens": 1000}),
        ("tags", {"model": model, "messages": one(TAGS), "stream": False}),
        ("follow-ups", {"model": model, "messages": one(FOLLOW_UPS), "stream": False}),
    ]
