"""Refuse U+0000 in paths, query strings and JSON bodies with a 422.

PostgreSQL cannot store NUL in text (SQLite can): without this guard the same request
would be a 500 on one backend and stored on the other. Checked once at the edge, so every
string input of every route is covered, including ones added later.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from avatar_api.errors import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE

# Bodies past this size are left to the route's own limits (uploads stream through).
_MAX_INSPECTED_BODY = 1024 * 1024


def _problem(where: str, path: str) -> bytes:
    return json.dumps(
        {
            "type": PROBLEM_TYPE_BASE + "validation_error",
            "title": "Invalid request",
            "status": 422,
            "code": "validation_error",
            "detail": f"Text must not contain the NUL character (U+0000): found in the {where}.",
            "instance": path,
            "errors": [{"loc": [where], "msg": "NUL character", "type": "string_nul"}],
        }
    ).encode()


class NulGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        query: bytes = scope.get("query_string", b"")
        if "\x00" in path or b"%00" in query or b"\x00" in query:
            await self._refuse(send, "path" if "\x00" in path else "query", path)
            return
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            await self.app(scope, receive, send)
            return
        # JSON bodies are small and read whole by the route anyway: buffer, check, replay.
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([], message, receive), send)
                return
            body = message.get("body", b"")
            chunks.append(body)
            size += len(body)
            more = message.get("more_body", False)
            if size > _MAX_INSPECTED_BODY:
                break
        raw = b"".join(chunks)
        if b"\\u0000" in raw or b"\x00" in raw:
            await self._refuse(send, "body", path)
            return
        await self.app(scope, _replay(chunks, None, receive, more=more), send)

    @staticmethod
    async def _refuse(send: Send, where: str, path: str) -> None:
        body = _problem(where, path)
        await send(
            {
                "type": "http.response.start",
                "status": 422,
                "headers": [
                    (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(
    chunks: list[bytes], pending: Message | None, receive: Receive, *, more: bool = False
) -> Receive:
    """A receive() that first hands back what was already read, then the rest."""
    queue: list[Any] = []
    if chunks:
        queue.append({"type": "http.request", "body": b"".join(chunks), "more_body": more})
    if pending is not None:
        queue.append(pending)

    async def replay() -> Message:
        if queue:
            message: Message = queue.pop(0)
            return message
        return await receive()

    return replay
