"""The ``webhook.deliver`` job: one signed POST of one delivery, retried until it lands.

One attempt:

1. Read the delivery and its endpoint in a short transaction of its own. ``ctx.session``
   must not hold a transaction during the POST: on SQLite every transaction holds the
   database's write lock, and the POST may take ``AVATAR_WEBHOOK_TIMEOUT_SECONDS``.
2. Check the URL again (DNS may have changed since registration) and connect to one of the
   addresses that check vetted, never to a fresh resolution of the name: the URL's host is
   replaced by the vetted IP, and the ``Host`` header and TLS SNI (hence certificate
   verification) keep the name. A rebinding DNS answer cannot swap the target in between.
3. POST the signed body without following redirects (a 3xx counts as a failure: the
   redirect target was never vetted). 2xx -> succeeded. 410 Gone -> the endpoint is
   disabled. Anything else, no answer or a refused target -> retried on a schedule that
   spans about a day, then failed.

Success and 410 are written through ``ctx.session`` and commit with the job. A failed
attempt is recorded in its own transaction before raising, because the worker rolls
``ctx.session`` back on any error and the attempt did happen.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import ssl
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import httpx

from avatar_api import __version__
from avatar_api.db import session_scope
from avatar_api.jobs.errors import PermanentJobError, RetryableJobError
from avatar_api.jobs.registry import JobContext, JobKind
from avatar_api.models import WebhookDeliveryStatus
from avatar_api.models.job import Job
from avatar_api.observability.metrics import WEBHOOK_DELIVERIES
from avatar_api.webhooks import repository
from avatar_api.webhooks.events import DELIVER_JOB_KIND
from avatar_api.webhooks.signing import SecretUnreadable, decrypt_secret, signature_headers
from avatar_api.webhooks.ssrf import Resolver, UnsafeTarget, VettedTarget, system_resolver, vet_url

logger = logging.getLogger("avatar_api.webhooks")

USER_AGENT = f"avatar-api-webhooks/{__version__}"
# Delay after failed attempt n (1-based); the last one repeats. With the default 8
# attempts: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, about 27.6 h in all (Svix's schedule).
RETRY_SCHEDULE_SECONDS: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
# +-20 %: enough to spread retries of deliveries that failed together (a receiver outage)
# without letting full jitter shrink a 10 h wait to seconds and the whole span to hours.
RETRY_JITTER = 0.2
# Addresses tried per attempt when connecting fails (a dual-stack host with one dead family).
MAX_ADDRESSES_TRIED = 3
LAST_ERROR_MAX_CHARS = 500
DISABLED_BY_GONE = "The endpoint answered 410 Gone."


class DeliveryFailed(Exception):
    """An attempt that got no usable answer: no connection, a timeout, a refused target."""


def retry_delay(attempt: int, *, rng: random.Random) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based), jittered."""
    base = RETRY_SCHEDULE_SECONDS[min(max(attempt, 1), len(RETRY_SCHEDULE_SECONDS)) - 1]
    return base * rng.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    # Built once: loading the CA bundle costs milliseconds, and every attempt needs it.
    return httpx.create_ssl_context()


def _clip(text: str) -> str:
    return text if len(text) <= LAST_ERROR_MAX_CHARS else text[: LAST_ERROR_MAX_CHARS - 1] + "…"


def _delivery_id(job: Job) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(job.payload["delivery_id"]))
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class _Outcome:
    status_code: int | None
    error: str | None  # None: delivered (2xx)


async def post_pinned(
    target: VettedTarget,
    *,
    headers: dict[str, str],
    body: bytes,
    timeout_seconds: float,
    ssl_context: ssl.SSLContext,
) -> int:
    """POST ``body`` to the vetted addresses of ``target`` in turn; the first answer's status.

    A client of its own per attempt: a shared connection pool is keyed by the IP we
    connect to, and could hand a connection verified for one host name to another.
    """
    errors: list[str] = []
    extensions = {} if target.host_is_ip else {"sni_hostname": target.host}
    for address in target.addresses[:MAX_ADDRESSES_TRIED]:
        # trust_env=False: a proxy from HTTP(S)_PROXY would resolve the name itself.
        async with httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(verify=ssl_context, retries=0),
            timeout=timeout_seconds,
            follow_redirects=False,
            trust_env=False,
        ) as client:
            try:
                async with client.stream(
                    "POST",
                    target.url.copy_with(host=str(address)),
                    content=body,
                    headers={**headers, "Host": target.netloc},
                    extensions=extensions,
                ) as response:
                    # The body is never read: it is not needed, and it could be huge.
                    return response.status_code
            except httpx.ConnectError as exc:
                # Nothing was sent, so another address may be tried.
                errors.append(f"{address}: {str(exc) or type(exc).__name__}")
    raise DeliveryFailed("Could not connect: " + "; ".join(errors))


class _Deliverer:
    def __init__(
        self, *, resolver: Resolver, ssl_context: ssl.SSLContext | None, rng: random.Random
    ) -> None:
        self._resolver = resolver
        self._ssl_context = ssl_context
        self._rng = rng

    async def deliver(self, ctx: JobContext) -> None:
        delivery_id = _delivery_id(ctx.job)
        if delivery_id is None:
            raise PermanentJobError("The job has no valid delivery_id.", code="invalid_payload")
        settings = ctx.services.settings
        async with session_scope(ctx.services.sessionmaker) as session:
            delivery = await repository.get_delivery(session, delivery_id=delivery_id)
            endpoint = (
                None
                if delivery is None
                else await repository.get_endpoint(
                    session, tenant_id=delivery.tenant_id, endpoint_id=delivery.endpoint_id
                )
            )
        if delivery is None or delivery.status is not WebhookDeliveryStatus.pending:
            return  # deleted with its endpoint, or already settled by an earlier attempt
        if endpoint is None or not endpoint.enabled:
            reason = endpoint.disabled_reason if endpoint is not None else "deleted"
            await repository.update_pending_delivery(
                ctx.session,
                delivery_id=delivery_id,
                status=WebhookDeliveryStatus.failed,
                last_error=_clip(f"Not sent: the endpoint is disabled ({reason})."),
                next_attempt_at=None,
            )
            WEBHOOK_DELIVERIES.labels(outcome="endpoint_disabled").inc()
            return
        if ctx.attempt > settings.webhook_max_attempts:
            # AVATAR_WEBHOOK_MAX_ATTEMPTS was lowered while this delivery waited.
            raise PermanentJobError(
                f"Gave up after {ctx.attempt - 1} attempts.", code="webhook_delivery_failed"
            )
        try:
            secret = decrypt_secret(endpoint.encrypted_secret, key=settings.secret_key)
        except SecretUnreadable as exc:
            raise PermanentJobError(str(exc), code="webhook_secret_unreadable") from exc

        outcome = await self._attempt(
            url=endpoint.url,
            secret=secret,
            event_id=delivery.event_id,
            payload=delivery.payload,
            timeout_seconds=settings.webhook_timeout_seconds,
            allow_private=settings.webhook_allow_private_targets,
        )
        now = ctx.services.clock()
        log = {
            "delivery_id": str(delivery_id),
            "endpoint_id": str(endpoint.id),
            "event_type": delivery.event_type,
            "attempt": ctx.attempt,
            "status_code": outcome.status_code,
        }
        if outcome.error is None:
            await repository.update_pending_delivery(
                ctx.session,
                delivery_id=delivery_id,
                status=WebhookDeliveryStatus.succeeded,
                attempts=ctx.attempt,
                last_status_code=outcome.status_code,
                last_error=None,
                next_attempt_at=None,
                delivered_at=now,
            )
            logger.info("webhook.delivered", extra=log)
            WEBHOOK_DELIVERIES.labels(outcome="delivered").inc()
            return
        if outcome.status_code == 410:
            # The receiver says the URL is gone for good: stop sending it anything.
            await repository.disable_endpoint(
                ctx.session, endpoint_id=endpoint.id, reason=DISABLED_BY_GONE, now=now
            )
            await repository.update_pending_delivery(
                ctx.session,
                delivery_id=delivery_id,
                status=WebhookDeliveryStatus.failed,
                attempts=ctx.attempt,
                last_status_code=410,
                last_error="HTTP 410 Gone: the endpoint was disabled.",
                next_attempt_at=None,
            )
            logger.warning("webhook.endpoint_disabled", extra=log)
            WEBHOOK_DELIVERIES.labels(outcome="gone").inc()
            return

        final = ctx.attempt >= settings.webhook_max_attempts
        delay = None if final else retry_delay(ctx.attempt, rng=self._rng)
        async with session_scope(ctx.services.sessionmaker) as session:
            await repository.update_pending_delivery(
                session,
                delivery_id=delivery_id,
                status=WebhookDeliveryStatus.failed if final else WebhookDeliveryStatus.pending,
                attempts=ctx.attempt,
                last_status_code=outcome.status_code,
                last_error=_clip(outcome.error),
                next_attempt_at=None if delay is None else now + timedelta(seconds=delay),
            )
        logger.warning("webhook.attempt_failed", extra={**log, "error": outcome.error})
        WEBHOOK_DELIVERIES.labels(outcome="failed" if delay is None else "retry").inc()
        if delay is None:
            raise PermanentJobError(
                f"Gave up after {ctx.attempt} attempts: {outcome.error}",
                code="webhook_delivery_failed",
            )
        raise RetryableJobError(outcome.error, delay_seconds=delay)

    async def _attempt(
        self,
        *,
        url: str,
        secret: str,
        event_id: str,
        payload: dict[str, object],
        timeout_seconds: float,
        allow_private: bool,
    ) -> _Outcome:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        # Wall-clock time, not services.clock: receivers compare it with their own clocks.
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **signature_headers(secret=secret, msg_id=event_id, timestamp=timestamp, body=body),
        }
        try:
            # One deadline for the whole attempt (DNS, connect, send, response headers): a
            # receiver trickling bytes cannot hold a worker slot past it.
            async with asyncio.timeout(timeout_seconds):
                target = await vet_url(url, resolver=self._resolver, allow_private=allow_private)
                status_code = await post_pinned(
                    target,
                    headers=headers,
                    body=body.encode("utf-8"),
                    timeout_seconds=timeout_seconds,
                    ssl_context=self._ssl_context or _default_ssl_context(),
                )
        except UnsafeTarget as exc:
            return _Outcome(None, f"Target refused: {exc}")
        except (TimeoutError, httpx.TimeoutException):
            return _Outcome(None, f"No response within {timeout_seconds:g} s.")
        except DeliveryFailed as exc:
            return _Outcome(None, str(exc))
        except httpx.HTTPError as exc:
            return _Outcome(None, f"{type(exc).__name__}: {exc}")
        if 200 <= status_code < 300:
            return _Outcome(status_code, None)
        if 300 <= status_code < 400:
            return _Outcome(status_code, f"HTTP {status_code}: redirects are not followed.")
        return _Outcome(status_code, f"HTTP {status_code}.")


async def mark_given_up(ctx: JobContext, error: str) -> None:
    """on_give_up: a delivery still pending when its job fails for good is failed."""
    delivery_id = _delivery_id(ctx.job)
    if delivery_id is None:
        return
    delivery = await repository.get_delivery(ctx.session, delivery_id=delivery_id)
    await repository.update_pending_delivery(
        ctx.session,
        delivery_id=delivery_id,
        status=WebhookDeliveryStatus.failed,
        # Keep the last attempt's own error when there is one; it says more.
        last_error=(delivery.last_error if delivery and delivery.last_error else _clip(error)),
        next_attempt_at=None,
    )


def make_webhook_job_kinds(
    *,
    resolver: Resolver = system_resolver,
    ssl_context: ssl.SSLContext | None = None,
    rng: random.Random | None = None,
) -> list[JobKind]:
    """The webhook job kinds; tests pass their own resolver, TLS trust or jitter."""
    deliverer = _Deliverer(
        resolver=resolver,
        ssl_context=ssl_context,
        rng=rng or random.Random(),  # noqa: S311  (jitter, not secrecy)
    )
    return [JobKind(DELIVER_JOB_KIND, deliverer.deliver, on_give_up=mark_given_up)]


WEBHOOK_JOB_KINDS: list[JobKind] = make_webhook_job_kinds()
