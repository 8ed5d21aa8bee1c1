"""Per-training webhook tokens: unguessable, derived from the secret key, never stored.

fal signs every customer's webhooks with the same keys, so a valid signature alone does not
prove a webhook is about one of our trainings; the token in the URL does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

from avatar_api.settings import Settings


def webhook_token(settings: Settings, training_id: uuid.UUID) -> str:
    key = hashlib.sha256(b"fal-webhook-token\n" + settings.secret_key.get_secret_value().encode())
    digest = hmac.new(key.digest(), str(training_id).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def token_matches(settings: Settings, training_id: uuid.UUID, token: str) -> bool:
    # Bytes: compare_digest refuses non-ASCII str, and the token comes from a URL anyone can call.
    return hmac.compare_digest(webhook_token(settings, training_id).encode(), token.encode())


def webhook_url(settings: Settings, training_id: uuid.UUID) -> str:
    base = settings.public_base_url.rstrip("/")
    return f"{base}/v1/webhooks/fal/{training_id}/{webhook_token(settings, training_id)}"
