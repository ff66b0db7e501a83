"""An engine view pinned to one model version, so a solve cannot straddle a hot swap.

The solver pins ``engine.model_version`` when a solve starts. The gateway takes a lease on a
version *before* the solve starts (in the same event-loop step it reads the active version), and
hands the solver this view, whose ``model_version`` is the leased one: the version the swap
manager counts as in use is exactly the version every request of the episode carries.
"""

from __future__ import annotations

from typing import Any


class PinnedEngine:
    """Delegates everything to ``engine`` except ``model_version``."""

    def __init__(self, engine: Any, version: str) -> None:
        self._engine = engine
        self._version = version

    @property
    def model_version(self) -> str:
        return self._version

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)
