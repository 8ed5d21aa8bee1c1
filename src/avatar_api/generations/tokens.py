"""Per-generation webhook tokens: unguessable, derived from the secret key, never stored.

The same scheme as trainings' (see :mod:`avatar_api.training.tokens`) under its own key, so
a token issued for a training can never authenticate a generation webhook or vice versa.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

from avatar_api.settings import Settings

WEBHOOK_PATH = "/v1/webhooks/fal/generations"


def webhook_token(settings: Settings, generation_id: uuid.UUID) -> str:
    key = hashlib.sha256(
        b"fal-generation-webhook-token\n" + settings.secret_key.get_secret_value().encode()
    )
    digest = hmac.new(key.digest(), str(generation_id).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def token_matches(settings: Settings, generation_id: uuid.UUID, token: str) -> bool:
    # Bytes: compare_digest refuses non-ASCII str, and the token comes straight from a URL.
    expected = webhook_token(settings, generation_id).encode()
    return hmac.compare_digest(expected, token.encode("utf-8", "replace"))


def webhook_url(settings: Settings, generation_id: uuid.UUID) -> str:
    base = settings.public_base_url.rstrip("/")
    return f"{base}{WEBHOOK_PATH}/{generation_id}/{webhook_token(settings, generation_id)}"
