"""fal's webhook signatures: verification for the receiver, signing for the simulator.

fal signs ``request_id + "\\n" + user_id + "\\n" + timestamp + "\\n" + sha256_hex(body)``
with ED25519 and publishes its public keys as a JWKS. fal signs every customer's webhooks
with the same keys, so a valid signature proves the sender is fal, not that the webhook
belongs to us: callers must still match the request id (and the user id, and the token in
the webhook URL) against what they submitted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

logger = logging.getLogger("avatar_api.fal")

REQUEST_ID_HEADER = "X-Fal-Webhook-Request-Id"
USER_ID_HEADER = "X-Fal-Webhook-User-Id"
TIMESTAMP_HEADER = "X-Fal-Webhook-Timestamp"
SIGNATURE_HEADER = "X-Fal-Webhook-Signature"

MAX_JWKS_CACHE_SECONDS = 24 * 3600
_SIGNATURE_BYTES = 64
_PUBLIC_KEY_BYTES = 32
# Larger than any real unix time in seconds; keeps int() off absurdly long digit strings.
_MAX_TIMESTAMP_DIGITS = 12

SignatureFailure = Literal["missing_headers", "bad_timestamp", "stale_timestamp", "bad_signature"]


class WebhookSignatureError(Exception):
    """The webhook is not provably from fal; answer 401 and drop it."""

    def __init__(self, reason: SignatureFailure) -> None:
        super().__init__(reason)
        self.reason: SignatureFailure = reason


class JwksUnavailable(Exception):
    """fal's public keys cannot be loaded; answer 503 so that fal retries the delivery."""


@dataclass(frozen=True)
class VerifiedFalWebhook:
    request_id: str
    user_id: str
    timestamp: int
    # Hex SHA-256 of the body, as signed: callers key duplicates on it without re-hashing.
    body_sha256: str


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """The exact bytes fal signs for one webhook delivery."""
    return _message(request_id, user_id, timestamp, hashlib.sha256(body).hexdigest())


def _message(request_id: str, user_id: str, timestamp: str, body_sha256: str) -> bytes:
    return f"{request_id}\n{user_id}\n{timestamp}\n{body_sha256}".encode()


def _b64url_decode(value: str) -> bytes:
    # JWKs drop the base64 padding (RFC 7515), but not every publisher does.
    stripped = value.rstrip("=")
    return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))


def _b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def parse_jwks(document: object) -> list[Ed25519PublicKey]:
    """The usable Ed25519 keys of a JWKS document; anything else in it is skipped."""
    if not isinstance(document, dict):
        return []
    entries = document.get("keys")
    if not isinstance(entries, list):
        return []
    keys: list[Ed25519PublicKey] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        if entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519":
            continue
        x = entry.get("x")
        if not isinstance(x, str):
            continue
        try:
            raw = _b64url_decode(x)
        except (binascii.Error, ValueError):
            continue
        if len(raw) != _PUBLIC_KEY_BYTES:
            continue
        keys.append(Ed25519PublicKey.from_public_bytes(raw))
    return keys


class FalWebhookVerifier:
    """Checks the signature headers of a webhook against fal's JWKS.

    Keys are cached for ``cache_ttl_seconds`` (never more than 24 h). When no cached key
    verifies a signature, the JWKS is fetched again (fal may have rotated its keys), but at
    most once per ``refetch_min_interval_seconds``, so forged webhooks cannot turn this
    service into a load generator against fal. If a refresh fails, the previous keys stay
    in use until they are 24 h old.
    """

    def __init__(
        self,
        jwks_url: str,
        *,
        http: httpx.AsyncClient,
        tolerance_seconds: int = 300,
        cache_ttl_seconds: int = MAX_JWKS_CACHE_SECONDS,
        refetch_min_interval_seconds: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if tolerance_seconds <= 0 or cache_ttl_seconds <= 0 or refetch_min_interval_seconds < 0:
            raise ValueError("tolerance and cache TTL must be positive, the interval >= 0")
        self._jwks_url = jwks_url
        self._http = http
        self._tolerance = tolerance_seconds
        self._ttl = min(cache_ttl_seconds, MAX_JWKS_CACHE_SECONDS)
        self._refetch_interval = refetch_min_interval_seconds
        self._clock = clock
        self._keys: list[Ed25519PublicKey] = []
        self._fetched_at: float | None = None
        self._last_attempt_at: float | None = None
        self._generation = 0
        self._lock = asyncio.Lock()

    async def verify(self, headers: Mapping[str, str], body: bytes) -> VerifiedFalWebhook:
        """Return who and what the webhook is about, or raise.

        Raises :class:`WebhookSignatureError` for a webhook that is not fal's (or too old),
        :class:`JwksUnavailable` when no key is available to decide.
        """
        lowered = {name.lower(): value for name, value in headers.items()}
        request_id = lowered.get(REQUEST_ID_HEADER.lower(), "")
        user_id = lowered.get(USER_ID_HEADER.lower(), "")
        timestamp_text = lowered.get(TIMESTAMP_HEADER.lower(), "").strip()
        signature_hex = lowered.get(SIGNATURE_HEADER.lower(), "").strip()
        if not (request_id and user_id and timestamp_text and signature_hex):
            raise WebhookSignatureError("missing_headers")

        if (
            not timestamp_text.isascii()
            or not timestamp_text.isdigit()
            or len(timestamp_text) > _MAX_TIMESTAMP_DIGITS
        ):
            raise WebhookSignatureError("bad_timestamp")
        timestamp = int(timestamp_text)
        if abs(self._clock() - timestamp) > self._tolerance:
            raise WebhookSignatureError("stale_timestamp")

        try:
            signature = bytes.fromhex(signature_hex)
        except ValueError:
            raise WebhookSignatureError("bad_signature") from None
        if len(signature) != _SIGNATURE_BYTES:
            raise WebhookSignatureError("bad_signature")

        digest = hashlib.sha256(body).hexdigest()
        message = _message(request_id, user_id, timestamp_text, digest)
        verified = VerifiedFalWebhook(
            request_id=request_id, user_id=user_id, timestamp=timestamp, body_sha256=digest
        )
        keys, generation = await self._usable_keys()
        if self._verifies(keys, signature, message):
            return verified
        # Perhaps signed with a key fal added after our last fetch.
        if await self._refresh(generation):
            keys, _ = await self._usable_keys()
            if self._verifies(keys, signature, message):
                return verified
        raise WebhookSignatureError("bad_signature")

    def _verifies(self, keys: list[Ed25519PublicKey], signature: bytes, message: bytes) -> bool:
        """Try each key; the one that verifies is tried first next time.

        fal signs with one current key while its JWKS also lists others (around a
        rotation), and a failed Ed25519 check costs as much as a successful one.
        """
        for key in keys:
            try:
                key.verify(signature, message)
            except InvalidSignature:
                continue
            if key is not keys[0] and keys is self._keys:
                self._keys = [key, *(other for other in keys if other is not key)]
            return True
        return False

    async def _usable_keys(self) -> tuple[list[Ed25519PublicKey], int]:
        if self._fetched_at is None or self._age() >= self._ttl:
            await self._refresh(self._generation)
        if self._fetched_at is None or self._age() >= MAX_JWKS_CACHE_SECONDS:
            raise JwksUnavailable(f"no usable fal signing keys from {self._jwks_url}")
        return self._keys, self._generation

    def _age(self) -> float:
        assert self._fetched_at is not None
        return self._clock() - self._fetched_at

    async def _refresh(self, seen_generation: int) -> bool:
        """Make sure the keys are newer than ``seen_generation``; False if they cannot be.

        Concurrent callers share one fetch: whoever waited on the lock finds the keys
        already replaced and does not fetch again.
        """
        async with self._lock:
            if self._generation != seen_generation:
                return True
            now = self._clock()
            if (
                self._last_attempt_at is not None
                and now - self._last_attempt_at < self._refetch_interval
            ):
                return False
            self._last_attempt_at = now
            try:
                keys = await self._fetch()
            except JwksUnavailable as exc:
                logger.warning(
                    "fal.jwks_fetch_failed",
                    extra={"jwks_url": self._jwks_url, "error": str(exc)},
                )
                return False
            self._keys = keys
            self._fetched_at = now
            self._generation += 1
            logger.info("fal.jwks_fetched", extra={"jwks_url": self._jwks_url, "keys": len(keys)})
            return True

    async def _fetch(self) -> list[Ed25519PublicKey]:
        try:
            response = await self._http.get(self._jwks_url)
        except httpx.HTTPError as exc:
            raise JwksUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != httpx.codes.OK:
            raise JwksUnavailable(f"JWKS answered {response.status_code}")
        try:
            document = response.json()
        except ValueError as exc:
            raise JwksUnavailable("JWKS is not JSON") from exc
        keys = parse_jwks(document)
        if not keys:
            # Replacing good keys with none would reject every webhook until the next fetch.
            raise JwksUnavailable("JWKS holds no usable Ed25519 key")
        return keys


class FalWebhookSigner:
    """Signs webhooks exactly like fal does; the simulator's half of the protocol."""

    def __init__(self, private_key: bytes | None = None) -> None:
        """Use the given 32 raw private-key bytes, or a fresh random key."""
        self._key = (
            Ed25519PrivateKey.generate()
            if private_key is None
            else Ed25519PrivateKey.from_private_bytes(private_key)
        )

    def __repr__(self) -> str:
        return f"FalWebhookSigner(x={self._public_x()!r})"

    @property
    def private_bytes(self) -> bytes:
        """The 32 raw bytes to persist so that restarts keep the same JWKS."""
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def _public_x(self) -> str:
        raw = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return _b64url_encode(raw)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public key in fal's JWKS format (``x`` unpadded base64url)."""
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": self._public_x()}]}

    def sign(self, request_id: str, user_id: str, body: bytes, timestamp: int) -> dict[str, str]:
        """The four signature headers for one delivery of ``body``."""
        stamp = str(timestamp)
        signature = self._key.sign(signed_message(request_id, user_id, stamp, body))
        return {
            REQUEST_ID_HEADER: request_id,
            USER_ID_HEADER: user_id,
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: signature.hex(),
        }
