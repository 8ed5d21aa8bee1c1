"""The real :class:`~avatar_api.fal.gateway.TrainerGateway`: fal's queue API via fal-client.

What fal-client 1.0.3 does that shapes this adapter (read from its source):

- Every queue call goes through a retry loop: up to 10 attempts with exponential backoff
  and jitter (about 30 s in all) on timeouts, transport errors, 408/409/429, and on
  502/503/504 only when they look like an ingress error (no ``x-fal-request-id``).
  Repeating status, result or cancel is harmless; repeating a submit whose reply was lost
  creates a second billed job. So :meth:`FalClientGateway.submit` sends one POST through
  fal-client's own HTTP client (auth, backup-domain fallback on connect errors) but
  outside that loop, and reports :class:`FalSubmitAmbiguous` instead of guessing.
- ``AsyncClient.result()`` polls the status every 0.1 s until COMPLETED, with no deadline:
  :meth:`FalClientGateway.result` does a single GET of the response URL instead.
- ``AsyncClient.cancel()`` discards the response body: :meth:`FalClientGateway.cancel`
  sends the same PUT itself so it can read ``{status}`` / ``{success}`` answers.
- Status, result and cancel URLs come from ``AsyncClient.get_handle()``, which already
  drops the endpoint's sub-path; nothing here rebuilds them.
- Status requests use a fixed 120 s read timeout inside that retry loop, so each call
  here runs under an overall ``timeout`` deadline.
- The queue host is read from ``FAL_QUEUE_RUN_HOST`` / ``FAL_RUN_HOST`` when fal_client is
  imported. The key is always passed explicitly: with ``key=None`` fal-client would fall
  back to ``FAL_KEY`` and to the ``fal auth login`` token file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar
from urllib.parse import quote, urlencode

import fal_client
import httpx

# Private helpers of fal-client 1.0.x, used so that submit/result/cancel keep its auth,
# error parsing and host handling while skipping the behaviours described above.
from fal_client import client as fal_internals

from avatar_api.fal.gateway import (
    CancelOutcome,
    FalCredentialsMissing,
    FalError,
    FalPermanentError,
    FalRetriableError,
    FalState,
    FalStatus,
    FalSubmitAmbiguous,
    Submission,
)
from avatar_api.fal.telemetry import log_fal_call

logger = logging.getLogger("avatar_api.fal")

DEFAULT_REST_BASE_URL = "https://api.fal.ai"
STORE_IO_HEADER = "X-Fal-Store-IO"

# The request certainly never left this process, so repeating it cannot duplicate a job.
_NOT_SENT_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
)
_RETRIABLE_STATUS = frozenset({408, 409, 429})
_MAX_MESSAGE_CHARS = 500

_T = TypeVar("_T")


def describe_fal_detail(detail: object) -> str:
    """Render fal's error ``detail`` as one readable line.

    A 422 carries FastAPI-style ``[{"loc": ["body", "images_data_url"], "msg": "field
    required", ...}]``; that becomes ``images_data_url: field required``.
    """
    if isinstance(detail, str):
        text = detail
    elif isinstance(detail, list):
        text = "; ".join(_describe_item(item) for item in detail) or "invalid input"
    else:
        text = _describe_item(detail)
    return _truncate(text)


def _describe_item(item: object) -> str:
    if isinstance(item, dict):
        msg = item.get("msg")
        if isinstance(msg, str):
            path = _describe_loc(item.get("loc"))
            return f"{path}: {msg}" if path else msg
    if isinstance(item, str):
        return item
    return json.dumps(item, default=str)


def _describe_loc(loc: object) -> str:
    if not isinstance(loc, list | tuple):
        return ""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _truncate(text: str) -> str:
    text = text.strip()
    if len(text) <= _MAX_MESSAGE_CHARS:
        return text
    return text[: _MAX_MESSAGE_CHARS - 3] + "..."


def _error_for_status(
    status_code: int, message: str, error_type: str | None, *, submit: bool
) -> FalError:
    text = f"fal answered {status_code}: {message}" if message else f"fal answered {status_code}"
    if status_code in _RETRIABLE_STATUS:
        return FalRetriableError(text, status_code=status_code, error_type=error_type)
    if status_code >= 500:
        # A gateway error on submit can hide a job that was queued before the reply was lost.
        cls = FalSubmitAmbiguous if submit else FalRetriableError
        return cls(text, status_code=status_code, error_type=error_type)
    return FalPermanentError(text, status_code=status_code, error_type=error_type)


def _translate(exc: Exception, *, submit: bool) -> FalError:
    if isinstance(exc, fal_client.FalClientHTTPError):
        return _error_for_status(
            exc.status_code, describe_fal_detail(exc.message), exc.error_type, submit=submit
        )
    if isinstance(exc, _NOT_SENT_ERRORS):
        return FalRetriableError(f"could not reach fal: {_describe_exception(exc)}")
    # Read/write timeouts, resets after sending, our own deadline, an unreadable reply:
    # the request may have been processed.
    cls = FalSubmitAmbiguous if submit else FalRetriableError
    return cls(f"no usable answer from fal: {_describe_exception(exc)}")


def _describe_exception(exc: Exception) -> str:
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _body_json(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


def _cancel_outcome(response: httpx.Response) -> CancelOutcome | None:
    body = _body_json(response)
    if isinstance(body, dict):
        status = body.get("status")
        if status in ("OK", CancelOutcome.CANCELLATION_REQUESTED):
            return CancelOutcome.CANCELLATION_REQUESTED
        if status == CancelOutcome.ALREADY_COMPLETED:
            return CancelOutcome.ALREADY_COMPLETED
        if status == CancelOutcome.NOT_FOUND:
            return CancelOutcome.NOT_FOUND
        success = body.get("success")
        if success is True:
            return CancelOutcome.CANCELLATION_REQUESTED
        if success is False:
            # fal refuses a cancel only for a request that has already finished; the caller
            # reads the final state from status() either way.
            return CancelOutcome.ALREADY_COMPLETED
    return None


def _log_messages(logs: object) -> list[str]:
    if not isinstance(logs, list):
        return []
    messages: list[str] = []
    for entry in logs:
        if isinstance(entry, dict):
            message = entry.get("message")
            if message is not None:
                messages.append(str(message))
        elif isinstance(entry, str):
            messages.append(entry)
    return messages


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


class FalClientGateway:
    """Talks to fal.ai's queue through fal-client.

    ``key`` is the fal key (``id:secret``); without one, every call raises
    :class:`FalCredentialsMissing` before any network I/O. ``timeout`` bounds each call as a
    whole, fal-client's own retries included. ``http_client`` is used only for
    :meth:`delete_payloads` (fal-client has no call for it) and is owned by the caller.
    """

    def __init__(
        self,
        key: str | None,
        *,
        http_client: httpx.AsyncClient,
        timeout: float,
        rest_base_url: str = DEFAULT_REST_BASE_URL,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._key = key.strip() if key else ""
        self._http = http_client
        self._timeout = timeout
        self._rest_base_url = rest_base_url.rstrip("/")
        self._fal = (
            fal_client.AsyncClient(key=self._key, default_timeout=timeout) if self._key else None
        )

    def __repr__(self) -> str:
        return f"FalClientGateway(rest_base_url={self._rest_base_url!r}, timeout={self._timeout})"

    async def aclose(self) -> None:
        """Close fal-client's HTTP connections (fal-client itself never does)."""
        if self._fal is not None:
            client = await self._fal._client
            await client.aclose()

    async def submit(
        self,
        endpoint: str,
        arguments: Mapping[str, object],
        *,
        webhook_url: str | None,
        store_io: bool = False,
    ) -> Submission:
        async def call(fal: fal_client.AsyncClient) -> Submission:
            _check_endpoint(endpoint)
            url = fal_internals.QUEUE_URL_FORMAT + endpoint
            if webhook_url is not None:
                url += "?" + urlencode({"fal_webhook": webhook_url})
            headers = {} if store_io else {STORE_IO_HEADER: "0"}
            http = await fal._client
            response = await fal_internals._async_request(
                http,
                "POST",
                url,
                json=dict(arguments),
                headers=headers,
                timeout=self._timeout,
            )
            body = response.json()
            request_id = body.get("request_id") if isinstance(body, dict) else None
            if not isinstance(request_id, str) or not request_id:
                # A 2xx means fal probably queued it; without the id we cannot track it.
                raise FalSubmitAmbiguous(
                    "fal accepted the submit but sent no request_id",
                    status_code=response.status_code,
                )
            return Submission(request_id=request_id)

        return await self._run(
            "fal.submit",
            endpoint,
            None,
            call,
            submit=True,
            outcome=lambda _: "submitted",
            request_id_of=lambda submission: submission.request_id,
        )

    async def status(self, endpoint: str, request_id: str) -> FalStatus:
        async def call(fal: fal_client.AsyncClient) -> FalStatus:
            _check_endpoint(endpoint)
            try:
                raw = await fal.status(endpoint, request_id, with_logs=True)
            except (KeyError, ValueError, TypeError) as exc:
                # fal-client parses the body strictly; a body it cannot parse is most
                # likely a transient proxy page, and status() is safe to repeat.
                raise FalRetriableError(
                    f"unexpected status response from fal: {_describe_exception(exc)}"
                ) from exc
            return _to_status(raw)

        return await self._run(
            "fal.status",
            endpoint,
            request_id,
            call,
            submit=False,
            outcome=lambda status: status.state.value,
        )

    async def result(self, endpoint: str, request_id: str) -> dict[str, object]:
        async def call(fal: fal_client.AsyncClient) -> dict[str, object]:
            _check_endpoint(endpoint)
            handle = await fal.get_handle(endpoint, request_id)
            response = await fal_internals._async_maybe_retry_request(
                handle.client, "GET", handle.response_url, timeout=self._timeout
            )
            body = _body_json(response)
            if not isinstance(body, dict):
                raise FalRetriableError(
                    "fal's result is not a JSON object", status_code=response.status_code
                )
            return body

        return await self._run(
            "fal.result", endpoint, request_id, call, submit=False, outcome=lambda _: "ok"
        )

    async def cancel(self, endpoint: str, request_id: str) -> CancelOutcome:
        async def call(fal: fal_client.AsyncClient) -> CancelOutcome:
            _check_endpoint(endpoint)
            handle = await fal.get_handle(endpoint, request_id)
            try:
                response = await fal_internals._async_maybe_retry_request(
                    handle.client, "PUT", handle.cancel_url, timeout=self._timeout
                )
            except fal_client.FalClientHTTPError as exc:
                outcome = _cancel_outcome(exc.response)
                if exc.status_code == 404:
                    return CancelOutcome.NOT_FOUND
                if exc.status_code == 400 and outcome in (
                    CancelOutcome.ALREADY_COMPLETED,
                    CancelOutcome.NOT_FOUND,
                ):
                    return outcome
                raise
            return _cancel_outcome(response) or CancelOutcome.CANCELLATION_REQUESTED

        return await self._run(
            "fal.cancel",
            endpoint,
            request_id,
            call,
            submit=False,
            outcome=lambda outcome: outcome.value,
        )

    async def delete_payloads(self, request_id: str) -> bool:
        async def call(_: fal_client.AsyncClient) -> bool:
            url = f"{self._rest_base_url}/v1/models/requests/{quote(request_id, safe='')}/payloads"
            response = await self._http.delete(
                url,
                headers={"Authorization": f"Key {self._key}"},
                timeout=self._timeout,
            )
            if response.is_success:
                return True
            if response.status_code == 404:
                return False
            body = _body_json(response)
            detail = body.get("detail") if isinstance(body, dict) else None
            message = describe_fal_detail(detail if detail is not None else response.text)
            error_type = body.get("error_type") if isinstance(body, dict) else None
            raise _error_for_status(
                response.status_code, message, _optional_str(error_type), submit=False
            )

        return await self._run(
            "fal.delete_payloads",
            None,
            request_id,
            call,
            submit=False,
            outcome=lambda deleted: "deleted" if deleted else "not_found",
        )

    async def _run(
        self,
        event: str,
        endpoint: str | None,
        request_id: str | None,
        call: Callable[[fal_client.AsyncClient], Awaitable[_T]],
        *,
        submit: bool,
        outcome: Callable[[_T], str],
        request_id_of: Callable[[_T], str] | None = None,
    ) -> _T:
        """Run one call under the deadline, translate its errors and log it."""
        started = time.perf_counter()
        try:
            if self._fal is None:
                raise FalCredentialsMissing("no fal key is configured (FAL_KEY)")
            try:
                async with asyncio.timeout(self._timeout):
                    value = await call(self._fal)
            except FalError:
                raise
            except (fal_client.FalClientHTTPError, httpx.HTTPError, TimeoutError) as exc:
                raise _translate(exc, submit=submit) from exc
            except ValueError as exc:
                # An unreadable body on a 2xx (json.JSONDecodeError is a ValueError).
                raise _translate(exc, submit=submit) from exc
        except FalError as exc:
            _log_call(
                logging.WARNING,
                event,
                endpoint=endpoint,
                request_id=request_id,
                started=started,
                outcome=_error_outcome(exc),
                status_code=exc.status_code,
                error_type=exc.error_type,
                error=exc.message,
            )
            raise
        _log_call(
            logging.INFO,
            event,
            endpoint=endpoint,
            request_id=request_id_of(value) if request_id_of else request_id,
            started=started,
            outcome=outcome(value),
        )
        return value


def _check_endpoint(endpoint: str) -> None:
    try:
        fal_internals.AppId.from_endpoint_id(endpoint)
    except ValueError as exc:
        raise FalPermanentError(f"invalid fal endpoint id {endpoint!r}") from exc


def _to_status(raw: fal_client.Status) -> FalStatus:
    if isinstance(raw, fal_client.Queued):
        position = raw.position
        return FalStatus(
            state=FalState.IN_QUEUE,
            queue_position=position if isinstance(position, int) else None,
        )
    if isinstance(raw, fal_client.InProgress):
        return FalStatus(state=FalState.IN_PROGRESS, logs=_log_messages(raw.logs))
    if isinstance(raw, fal_client.Completed):
        return FalStatus(
            state=FalState.COMPLETED,
            logs=_log_messages(raw.logs),
            error=_optional_str(raw.error),
            error_type=_optional_str(raw.error_type),
        )
    raise FalRetriableError(f"unexpected status from fal-client: {type(raw).__name__}")


def _error_outcome(exc: FalError) -> str:
    if isinstance(exc, FalCredentialsMissing):
        return "credentials_missing"
    if isinstance(exc, FalSubmitAmbiguous):
        return "ambiguous"
    if isinstance(exc, FalRetriableError):
        return "retriable_error"
    return "permanent_error"


def _log_call(
    level: int,
    event: str,
    *,
    endpoint: str | None,
    request_id: str | None,
    started: float,
    outcome: str,
    status_code: int | None = None,
    error_type: str | None = None,
    error: str | None = None,
) -> None:
    log_fal_call(
        logger,
        level,
        event,
        backend="fal",
        endpoint=endpoint,
        request_id=request_id,
        started=started,
        outcome=outcome,
        status_code=status_code,
        error_type=error_type,
        error=error,
    )
