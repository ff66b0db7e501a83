"""Feedback tokens: proof that a feedback post comes from the caller who solved the problem.

Every solve (and chat completion) answers with ``feedback_token`` for its trajectory: an
HMAC-SHA256 of the trajectory id under a server key, so the gateway verifies it without
storing anything, and nobody who merely learns a trajectory id (it is in headers, URLs and
shared links) can produce one. Feedback that carries the token, or comes with the admin token,
is *trusted*: its corrected answer (or a thumbs-up on the trajectory's own answer) becomes the
gold label that retraining uses (:mod:`trainer.collect`). Any other feedback is recorded as a
*vote* that never sets a label.

The key is derived from MATHAGENT_ADMIN_TOKEN (rotating the admin token invalidates outstanding
feedback tokens); a development gateway without an admin token uses a random key per process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from api.settings import GatewaySettings

_CONTEXT = b"mathagent feedback token v1"
TOKEN_CHARS = 32  # 128 bits of the HMAC, hex


class FeedbackTokens:
    def __init__(self, settings: GatewaySettings) -> None:
        secret = settings.admin_token.get_secret_value().encode() or secrets.token_bytes(32)
        self._key = hmac.new(secret, _CONTEXT, hashlib.sha256).digest()

    def mint(self, trajectory_id: str) -> str:
        """The feedback token of ``trajectory_id`` (give it only to the caller who solved it)."""
        return hmac.new(self._key, trajectory_id.encode(), hashlib.sha256).hexdigest()[:TOKEN_CHARS]

    def verify(self, trajectory_id: str, token: str) -> bool:
        return hmac.compare_digest(self.mint(trajectory_id).encode(), token.encode())
