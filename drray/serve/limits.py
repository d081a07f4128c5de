"""Request bodies above a size limit get HTTP 413 before they are read whole (an ASGI middleware).

A declared `Content-Length` above the limit is answered at once, without reading a byte of the
body; a body without one (chunked) is counted as it streams in, and the request is cut off with
413 as soon as it passes the limit. Applies to every route: the REST API and the page's uploads.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from starlette.exceptions import HTTPException

from drray.serve.refusals import ReasonCode

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def too_large_detail(limit: int) -> str:
    return f"request body is larger than the limit of {limit:,} bytes ({limit / 2**20:g} MiB); send a smaller image"


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a streamed body passes the limit.

    An HTTPException, so an app's own exception handling (FastAPI's, or the mounted Gradio app's)
    answers 413 where it catches it first; otherwise the middleware does.
    """

    reason = ReasonCode.BODY_TOO_LARGE

    def __init__(self, limit: int):
        super().__init__(status_code=413, detail=too_large_detail(limit))


def _too_large_body(limit: int) -> bytes:
    return json.dumps({"detail": too_large_detail(limit), "reason": ReasonCode.BODY_TOO_LARGE}).encode()


class BodySizeLimit:
    """ASGI middleware: 413 for HTTP request bodies above `max_bytes`."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject(send)
            return
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = _too_large_body(self.max_bytes)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
