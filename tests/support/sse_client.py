"""Reading server-sent events from an httpx stream (what the tests see on the wire)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx


def events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """(event name, decoded data) for each event; name 'message' when the event has none."""
    name, data = "message", []
    for line in response.iter_lines():
        if not line:
            if data:
                raw = "\n".join(data)
                yield name, raw if raw == "[DONE]" else json.loads(raw)
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
