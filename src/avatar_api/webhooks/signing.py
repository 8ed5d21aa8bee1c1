"""Standard Webhooks signing, and the endpoint secrets it needs, encrypted at rest.

Each delivery attempt carries ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, keyed with the
base64-decoded part of the endpoint's ``whsec_`` secret (https://www.standardwebhooks.com).
Receivers verify with any Standard Webhooks library, e.g. ``Webhook(secret).verify(...)``.

The secret must be recoverable to sign, so it cannot be hashed like an API key. It is
stored encrypted (Fernet) under a key derived from ``AVATAR_SECRET_KEY``, so a database
dump alone does not let anyone forge our webhooks. Changing ``AVATAR_SECRET_KEY`` makes
stored secrets unreadable: their deliveries fail with ``webhook_secret_unreadable`` and
the endpoints must be registered again.
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

SECRET_PREFIX = "whsec_"  # noqa: S105  (a prefix, not a secret)
# Standard Webhooks asks for 24-64 random bytes; 32 bytes is SHA-256's own strength.
SECRET_BYTES = 32
_HKDF_INFO = b"avatar-api/webhook-endpoint-secret/v1"

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"


class SecretUnreadable(Exception):
    """A stored endpoint secret cannot be decrypted (``AVATAR_SECRET_KEY`` changed?)."""


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def _fernet(key: SecretStr) -> Fernet:
    # A key of its own for this purpose, so the raw service secret never encrypts anything.
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(
        key.get_secret_value().encode("utf-8")
    )
    return Fernet(base64.urlsafe_b64encode(derived))


def encrypt_secret(secret: str, *, key: SecretStr) -> str:
    return _fernet(key).encrypt(secret.encode("utf-8")).decode("ascii")


def decrypt_secret(token: str, *, key: SecretStr) -> str:
    try:
        return _fernet(key).decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError) as exc:
        raise SecretUnreadable(
            "The endpoint's signing secret cannot be decrypted with the current "
            "AVATAR_SECRET_KEY; register the endpoint again."
        ) from exc


def signature_headers(*, secret: str, msg_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt sending ``body``."""
    signature: str = Webhook(secret).sign(
        msg_id=msg_id, timestamp=datetime.fromtimestamp(timestamp, UTC), data=body
    )
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature,
    }
