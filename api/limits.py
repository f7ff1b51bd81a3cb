"""Request body limits, enforced while the body streams in (before anything is parsed or stored)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    """Raised from `receive` when the body passes its limit; BodyLimit turns it into a 413."""



# (method, path pattern) -> which limit applies; anything else gets `default_limit`.
UPLOAD_ROUTE = re.compile(r"^/v1/jobs/?$")
PART_ROUTE = re.compile(r"^/v1/uploads/[^/]+/parts/[^/]+/?$")


class BodyLimit:
    """Answer 413 with a JSON message as soon as a request body passes its limit.

    limit_for(method, path) -> (limit in bytes, hint). Content-Length is checked first; chunked bodies
    are counted as they arrive.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str, str], tuple[int, str]]) -> None:
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, hint = self.limit_for(scope["method"], scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _reject(send, declared, limit, hint)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted, tracking_send)
        except* BodyTooLarge:
            if started:
                raise
            await _reject(send, seen, limit, hint)


def _content_length(scope: Scope) -> int | None:
    for k, v in scope.get("headers", []):
        if k == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None


async def _reject(send: Send, size: int, limit: int, hint: str) -> None:
    body = json.dumps({"error": "too_large", "message": f"request body of {size}+ bytes is over the limit "
                       f"of {limit} bytes", "hint": hint}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
