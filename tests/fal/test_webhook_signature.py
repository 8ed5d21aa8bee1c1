"""Verification of fal's webhook signatures, against a JWKS served through pytest-httpx."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pytest_httpx import HTTPXMock

from avatar_api.fal import webhook_signature
from avatar_api.fal.webhook_signature import (
    FalWebhookSigner,
    FalWebhookVerifier,
    JwksUnavailable,
    VerifiedFalWebhook,
    WebhookSignatureError,
)

JWKS_URL = "https://rest.fal.ai/.well-known/jwks.json"
NOW = 1_763_000_000
REQUEST_ID = "764cabcf-b745-4b3e-ae38-1200304cf45b"
USER_ID = "github|1234567"
BODY = json.dumps(
    {
        "request_id": REQUEST_ID,
        "gateway_request_id": REQUEST_ID,
        "status": "OK",
        "payload": {"diffusers_lora_file": {"url": "https://v3.fal.media/files/lora.safetensors"}},
    }
).encode()


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def signer() -> FalWebhookSigner:
    return FalWebhookSigner()


def make_verifier(http: httpx.AsyncClient, clock: Clock, **options: int) -> FalWebhookVerifier:
    return FalWebhookVerifier(JWKS_URL, http=http, clock=clock, **options)


def jwks_requests(httpx_mock: HTTPXMock) -> int:
    return len(httpx_mock.get_requests(url=JWKS_URL))


async def test_valid_signature(
    http: httpx.AsyncClient, clock: Clock, signer: FalWebhookSigner, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(url=JWKS_URL, json=signer.jwks())
    headers = signer.sign(REQUEST_ID, USER_ID, BODY, NOW)

    verified = await make_verifier(http, clock).verify(headers, BODY)

    assert verified == VerifiedFalWebhook(
        request_id=REQUEST_ID,
        user_id=USER_ID,
        timestamp=NOW,
        body_sha256=hashlib.sha256(BODY).hexdigest(),
    )


async def test_signature_made_without_the_signer_helper(
    http: httpx.AsyncClient, clock: Clock, httpx_mock: HTTPXMock
) -> None:
    # Built by hand from fal's documented recipe, so signer and verifier cannot share a bug.
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    x = base64.urlsafe_b64encode(public).decode().rstrip("=")
    httpx_mock.add_response(url=JWKS_URL, json={"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x}]})
    message = f"{REQUEST_ID}\n{USER_ID}\n{NOW}\n{hashlib.sha256(BODY).hexdigest()}".encode()
    headers = {
        # ASGI servers hand over lower-case header names.
        "x-fal-webhook-request-id": REQUEST_ID,
        "x-fal-webhook-user-id": USER_ID,
        "x-fal-webhook-timestamp": str(NOW),
        "x-fal-webhook-signature": private.sign(message).hex(),
    }

    verified = await make_verifier(http, clock).verify(headers, BODY)

    assert verified.request_id == REQUEST_ID


async def test_tampered_body(
    http: httpx.AsyncClient, clock: Clock, signer: FalWebhookSigner, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(url=JWKS_URL, json=signer.jwks())
    headers = signer.sign(REQUEST_ID, USER_ID, BODY, NOW)

    with pytest.raises(WebhookSignatureError) as caught:
        await make_verifier(http, clock).verify(headers, BODY.replace(b'"OK"', b'"ERROR"'))

    assert caught.value.reason == "bad_signature"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Fal-Webhook-Request-Id", "another-request"),
        ("X-Fal-Webhook-User-Id", "another-user"),
        ("X-Fal-Webhook-Timestamp", str(NOW + 1)),
    ],
)
async def test_tampered_header(
    http: httpx.AsyncClient,
    clock: Clock,
    signer: FalWebhookSigner,
    httpx_mock: HTTPXMock,
    header: str,
    value: str,
) -> None:
    httpx_mock.add_response(url=JWKS_URL, json=signer.jwks())
    headers = signer.sign(REQUEST_ID, USER_ID, BODY, NOW) | {header: value}

    with pytest.raises(WebhookSignatureError, match="bad_signature"):
        await make_verifier(http, clock).verify(headers, BODY)


async def test_wrong_key(
    http: httpx.AsyncClient, clock: Clock, signer: FalWebhookSigner, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(url=JWKS_URL, json=signer.jwks())
    headers = FalWebhookSigner().sign(REQUEST_ID, USER_ID, BODY, NOW)

    with pytest.raises(WebhookSignatureError) as caught:
        await make_verifier(http, clock).verify(headers, BODY)

    assert caught.value.reason == "bad_signature"


@pytest.mark.parametrize(
    "offset", [-301, 301, -10_000, 10_000], ids=["stale", "future", "old", "far-future"]
)
async def test_timestamp_outside_tolerance(
    http: httpx.AsyncClient,
    clock: Clock,
    signer: FalWebhookSigner,
    httpx_mock: HTTPXMock,
    offset: int,
) -> None:
    headers = signer.sign(REQUEST_ID, USER_ID, BODY, NOW + offset)

    with pytest.raises(WebhookSignatureError) as caught:
        await make_verifier(http, clock).verify(headers, BODY)

    assert caught.value.reason == "stale_timestamp"
    assert jwks_requests(httpx_mock) == 0


@pytest.mark.parametrize("offset", [-300, 300])
async def test_timestamp_at_the_tolerance_edge(
    http: httpx.AsyncClient,
    clock: Clock,
    signer: FalWebhookSigner,
    httpx_mock: HTTPXMock,
    offset: int,
) -> None:
    httpx_mock.add_response(url=JWKS_URL, json=signer.jwks())
    headers = signer.sign(REQUEST_ID, USER_ID, BODY, NOW + offset)

    verified = await make_verifier(http, clock).verify(headers, BODY)

    assert verified.timestamp == NOW + offset


async def test_custom_tolerance(
    http: httpx.AsyncClient, clock: Clock, signer: FalWebhookSigner
) -> None:
    headers = signer.sign(REQUEST_ID, USER_ID, BODY, NOW - 61)

    with pytest.raises(WebhookSignatureError, match="stale_timestamp"):
        await make_verifier(http, clock, tolerance_seconds=60).verify(headers, BODY)


@pytest.mark.parametrize("value", ["soon", "1763000000.5", "-1763000000", "+1763000000", "١٢٣"])
async def test_bad_timestamp(
    http: httpx.AsyncClient, clock: Clock, signer: FalWebhookSigner, value: str
) -> None:
    headers = signer.sign(REQUEST_ID, USER_ID, BODY, NOW) | {"X-Fal-Webhook-Timestamp": value}

    with pytest.raises(WebhookSignatureError) as caught:
        await make_verifier(http, clock).verify(headers, BODY)

    assert caught.value.reason == "bad_timestamp"


@pytest.mark.parametrize(
    "missing",
    [
        "X-Fal-Webhook-Request-Id",
        "X-Fal-Webhook-User-Id",
        "X-Fal-Webhook-Timestamp",
        "X-Fal-Webhook-Signature",
    ],
)
async def test_missing_header(
    http: httpx.AsyncClient, clock: Clock, signer: FalWebhookSigner, missing: str
) -> None:
    headers = signer.sign(REQUEST_ID, USER_ID, BODY, NOW)
    del headers[missing]

    with pytest.raises(WebhookSignatureError) as caught:
        await make_verifier(http, clock).verify(headers, BODY)

    assert caught.value.reason == "missing_headers"


async def test_empty_header_counts_as_missing(
    http: httpx.AsyncClient, clock: Clock, signer: FalWebhookSigner
) -> None:
    headers = signer.sign(REQUEST_ID, USER_ID, BODY, NOW) | {"X-Fal-Webhook-User-Id": ""}

    with pytest.raises(WebhookSignatureError, match="missing_headers"):
        await make_verifier(http, clock).verify(headers, BODY)


@pytest.mark.parametrize("signature", ["not-hex", "abcd", "00" * 65])
async def test_malformed_signature_is_rejected_without_fetching_keys(
    http: httpx.AsyncClient,
    clock: Clock,
    signer: FalWebhookSigner,
    httpx_mock: HTTPXMock,
    signature: str,
) -> None:
    headers = signer.sign(REQUEST_ID, USER_ID, BODY, NOW) | {"X-Fal-Webhook-Signature": signature}

    with pytest.raises(WebhookSignatureError, match="bad_signature"):
        await make_verifier(http, clock).verify(headers, BODY)

    assert jwks_requests(httpx_mock) == 0


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
async def test_x_with_or_without_base64_padding(
    http: httpx.AsyncClient,
    clock: Clock,
    signer: FalWebhookSigner,
    httpx_mock: HTTPXMock,
    padded: bool,
) -> None:
    jwk = signer.jwks()["keys"][0]
    assert "=" not in jwk["x"]
    x = jwk["x"] + "=" if padded else jwk["x"]
    httpx_mock.add_response(url=JWKS_URL, json={"keys": [jwk | {"x": x}]})

    verified = await make_verifier(http, clock).verify(
        signer.sign(REQUEST_ID, USER_ID, BODY, NOW), BODY
    )

    assert verified.user_id == USER_ID


async def test_malformed_keys_are_skipped(
    http: httpx.AsyncClient, clock: Clock, signer: FalWebhookSigner, httpx_mock: HTTPXMock
) -> None:
    good = signer.jwks()["keys"][0]
    httpx_mock.add_response(
        url=JWKS_URL,
        json={
            "keys": [
                "not-an-object",
                {"kty": "RSA", "n": "abc", "e": "AQAB"},
                {"kty": "OKP", "crv": "X25519", "x": good["x"]},
                {"kty": "OKP", "crv": "Ed25519"},
                {"kty": "OKP", "crv": "Ed25519", "x": 12345},
                {"kty": "OKP", "crv": "Ed25519", "x": "!!!not base64!!!"},
                {"kty": "OKP", "crv": "Ed25519", "x": "c2hvcnQ"},
                good,
            ]
        },
    )

    verified = await make_verifier(http, clock).verify(
        signer.sign(REQUEST_ID, USER_ID, BODY, NOW), BODY
    )

    assert verified.request_id == REQUEST_ID


async def test_key_rotation_refetches_and_verifies(
    http: httpx.AsyncClient, clock: Clock, signer: FalWebhookSigner, httpx_mock: HTTPXMock
) -> None:
    rotated = FalWebhookSigner()
    httpx_mock.add_response(url=JWKS_URL, json=signer.jwks())
    httpx_mock.add_response(
        url=JWKS_URL, json={"keys": signer.jwks()["keys"] + rotated.jwks()["keys"]}
    )
    verifier = make_verifier(http, clock)
    await verifier.verify(signer.sign(REQUEST_ID, USER_ID, BODY, NOW), BODY)

    clock.now += 61
    verified = await verifier.verify(rotated.sign(REQUEST_ID, USER_ID, BODY, NOW + 61), BODY)

    assert verified.timestamp == NOW + 61
    assert jwks_requests(httpx_mock) == 2


class CountingKey:
    """A JWKS key that counts its verification attempts."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self.key = key
        self.attempts = 0

    def verify(self, signature: bytes, message: bytes) -> None:
        self.attempts += 1
        self.key.verify(signature, message)


async def test_the_key_that_verified_is_tried_first_next_time(
    http: httpx.AsyncClient,
    clock: Clock,
    signer: FalWebhookSigner,
    httpx_mock: HTTPXMock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # fal's JWKS lists other keys around a rotation; each failed check is a full Ed25519
    # verification, so the signing key should not stay last.
    listed = [FalWebhookSigner(), FalWebhookSigner(), signer]
    httpx_mock.add_response(
        url=JWKS_URL, json={"keys": [key for s in listed for key in s.jwks()["keys"]]}
    )
    parse = webhook_signature.parse_jwks
    counted: list[CountingKey] = []

    def counting_parse(document: object) -> list[Ed25519PublicKey]:
        counted[:] = [CountingKey(key) for key in parse(document)]
        return counted  # type: ignore[return-value]

    monkeypatch.setattr(webhook_signature, "parse_jwks", counting_parse)
    verifier = make_verifier(http, clock)

    for _ in range(3):
        await verifier.verify(signer.sign(REQUEST_ID, USER_ID, BODY, NOW), BODY)

    assert [key.attempts for key in counted] == [1, 1, 3]
    with pytest.raises(WebhookSignatureError):
        await verifier.verify(FalWebhookSigner().sign(REQUEST_ID, USER_ID, BODY, NOW), BODY)
    assert [key.attempts for key in counted] == [2, 2, 4]


async def test_forged_signatures_cause_at_most_one_refetch_per_interval(
    http: httpx.AsyncClient, clock: Clock, signer: FalWebhookSigner, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(url=JWKS_URL, json=signer.jwks(), is_reusable=True)
    forger = FalWebhookSigner()
    verifier = make_verifier(http, clock, refetch_min_interval_seconds=60)
    await verifier.verify(signer.sign(REQUEST_ID, USER_ID, BODY, NOW), BODY)
    assert jwks_requests(httpx_mock) == 1

    for _ in range(5):
        with pytest.raises(WebhookSignatureError, match="bad_signature"):
            await verifier.verify(forger.sign(REQUEST_ID, USER_ID, BODY, NOW), BODY)
    assert jwks_requests(httpx_mock) == 1

    clock.now += 60
    for _ in range(5):
        with pytest.raises(WebhookSignatureError, match="bad_signature"):
            await verifier.verify(forger.sign(REQUEST_ID, USER_ID, BODY, NOW + 60), BODY)
    assert jwks_requests(httpx_mock) == 2

    clock.now += 59
    with pytest.raises(WebhookSignatureError, match="bad_signature"):
        await verifier.verify(forger.sign(REQUEST_ID, USER_ID, BODY, NOW + 119), BODY)
    assert jwks_requests(httpx_mock) == 2


async def test_concurrent_verifications_share_one_fetch(
    http: httpx.AsyncClient, clock: Clock, signer: FalWebhookSigner, httpx_mock: HTTPXMock
) -> None:
    async def slow_jwks(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.02)
        return httpx.Response(200, json=signer.jwks())

    httpx_mock.add_callback(slow_jwks, url=JWKS_URL, is_reusable=True)
    verifier = make_verifier(http, clock, refetch_min_interval_seconds=0)
    headers = signer.sign(REQUEST_ID, USER_ID, BODY, NOW)

    results = await asyncio.gather(*(verifier.verify(headers, BODY) for _ in range(10)))

    assert {r.request_id for r in results} == {REQUEST_ID}
    assert jwks_requests(httpx_mock) == 1


async def test_concurrent_rotation_refetches_share_one_fetch(
    http: httpx.AsyncClient, clock: Clock, signer: FalWebhookSigner, httpx_mock: HTTPXMock
) -> None:
    rotated = FalWebhookSigner()
    httpx_mock.add_response(url=JWKS_URL, json=signer.jwks())

    async def rotated_jwks(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.02)
        return httpx.Response(200, json=rotated.jwks())

    httpx_mock.add_callback(rotated_jwks, url=JWKS_URL, is_reusable=True)
    verifier = make_verifier(http, clock, refetch_min_interval_seconds=0)
    await verifier.verify(signer.sign(REQUEST_ID, USER_ID, BODY, NOW), BODY)
    headers = rotated.sign(REQUEST_ID, USER_ID, BODY, NOW)

    await asyncio.gather(*(verifier.verify(headers, BODY) for _ in range(10)))

    assert jwks_requests(httpx_mock) == 2


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(httpx.Response(503, text="unavailable"), id="503"),
        pytest.param(httpx.Response(200, text="<html>"), id="not-json"),
        pytest.param(httpx.Response(200, json={"keys": []}), id="no-keys"),
        pytest.param(httpx.ConnectError("refused"), id="connect-error"),
    ],
)
async def test_jwks_unavailable_without_cached_keys(
    http: httpx.AsyncClient,
    clock: Clock,
    signer: FalWebhookSigner,
    httpx_mock: HTTPXMock,
    failure: httpx.Response | Exception,
) -> None:
    if isinstance(failure, httpx.Response):
        httpx_mock.add_response(
            url=JWKS_URL, status_code=failure.status_code, content=failure.content
        )
    else:
        httpx_mock.add_exception(failure, url=JWKS_URL)

    with pytest.raises(JwksUnavailable):
        await make_verifier(http, clock).verify(signer.sign(REQUEST_ID, USER_ID, BODY, NOW), BODY)


async def test_jwks_recovers_after_the_refetch_interval(
    http: httpx.AsyncClient, clock: Clock, signer: FalWebhookSigner, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(url=JWKS_URL, status_code=503)
    httpx_mock.add_response(url=JWKS_URL, json=signer.jwks())
    verifier = make_verifier(http, clock)
    with pytest.raises(JwksUnavailable):
        await verifier.verify(signer.sign(REQUEST_ID, USER_ID, BODY, NOW), BODY)
    # A burst of (possibly forged) webhooks must not hammer a JWKS endpoint that is down.
    with pytest.raises(JwksUnavailable):
        await verifier.verify(signer.sign(REQUEST_ID, USER_ID, BODY, NOW), BODY)
    assert jwks_requests(httpx_mock) == 1

    clock.now += 60
    verified = await verifier.verify(signer.sign(REQUEST_ID, USER_ID, BODY, NOW + 60), BODY)

    assert verified.timestamp == NOW + 60


async def test_cached_keys_are_used_while_the_jwks_is_down(
    http: httpx.AsyncClient, clock: Clock, signer: FalWebhookSigner, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(url=JWKS_URL, json=signer.jwks())
    httpx_mock.add_response(url=JWKS_URL, status_code=500, is_reusable=True)
    verifier = make_verifier(http, clock, cache_ttl_seconds=3600)
    await verifier.verify(signer.sign(REQUEST_ID, USER_ID, BODY, NOW), BODY)

    clock.now += 3600
    verified = await verifier.verify(signer.sign(REQUEST_ID, USER_ID, BODY, NOW + 3600), BODY)

    assert verified.timestamp == NOW + 3600
    assert jwks_requests(httpx_mock) == 2


async def test_cached_keys_expire_after_24_hours_even_when_the_jwks_is_down(
    http: httpx.AsyncClient, clock: Clock, signer: FalWebhookSigner, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(url=JWKS_URL, json=signer.jwks())
    httpx_mock.add_response(url=JWKS_URL, status_code=500, is_reusable=True)
    verifier = make_verifier(http, clock, cache_ttl_seconds=3600)
    await verifier.verify(signer.sign(REQUEST_ID, USER_ID, BODY, NOW), BODY)

    clock.now += 24 * 3600
    with pytest.raises(JwksUnavailable):
        await verifier.verify(signer.sign(REQUEST_ID, USER_ID, BODY, NOW + 24 * 3600), BODY)


async def test_cache_ttl_is_capped_at_24_hours(
    http: httpx.AsyncClient, clock: Clock, signer: FalWebhookSigner, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(url=JWKS_URL, json=signer.jwks(), is_reusable=True)
    verifier = make_verifier(http, clock, cache_ttl_seconds=7 * 24 * 3600)
    await verifier.verify(signer.sign(REQUEST_ID, USER_ID, BODY, NOW), BODY)

    clock.now += 24 * 3600 - 1
    await verifier.verify(signer.sign(REQUEST_ID, USER_ID, BODY, int(clock.now)), BODY)
    assert jwks_requests(httpx_mock) == 1

    clock.now += 1
    await verifier.verify(signer.sign(REQUEST_ID, USER_ID, BODY, int(clock.now)), BODY)
    assert jwks_requests(httpx_mock) == 2


# RFC 8032, section 7.1, test 1.
RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")


def test_signer_loaded_from_raw_bytes_publishes_fals_jwks_format() -> None:
    signer = FalWebhookSigner(RFC8032_SECRET)

    assert signer.private_bytes == RFC8032_SECRET
    assert signer.jwks() == {
        "keys": [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": base64.urlsafe_b64encode(RFC8032_PUBLIC).decode().rstrip("="),
            }
        ]
    }
    assert "9d61b1" not in repr(signer)


def test_signer_headers_follow_fals_recipe() -> None:
    signer = FalWebhookSigner(RFC8032_SECRET)

    headers = signer.sign(REQUEST_ID, USER_ID, BODY, NOW)

    assert set(headers) == {
        "X-Fal-Webhook-Request-Id",
        "X-Fal-Webhook-User-Id",
        "X-Fal-Webhook-Timestamp",
        "X-Fal-Webhook-Signature",
    }
    assert headers["X-Fal-Webhook-Timestamp"] == str(NOW)
    message = f"{REQUEST_ID}\n{USER_ID}\n{NOW}\n{hashlib.sha256(BODY).hexdigest()}".encode()
    public = Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET).public_key()
    public.verify(bytes.fromhex(headers["X-Fal-Webhook-Signature"]), message)


def test_generated_signers_differ() -> None:
    assert FalWebhookSigner().jwks() != FalWebhookSigner().jwks()


async def test_signer_verifier_round_trip(
    http: httpx.AsyncClient, clock: Clock, httpx_mock: HTTPXMock
) -> None:
    original = FalWebhookSigner()
    restored = FalWebhookSigner(original.private_bytes)
    httpx_mock.add_response(url=JWKS_URL, json=original.jwks())
    body = b'{"request_id": "r-1", "status": "ERROR", "error": "boom", "payload": null}'

    verified = await make_verifier(http, clock).verify(
        restored.sign("r-1", "user-9", body, NOW - 5), body
    )

    assert verified == VerifiedFalWebhook(
        request_id="r-1",
        user_id="user-9",
        timestamp=NOW - 5,
        body_sha256=hashlib.sha256(body).hexdigest(),
    )
