"""The uvicorn configuration of every gateway listener (both planes, `python -m serving` and in-process).

One place for what protects the HTTP layer itself, below the routes: the size of a request's header block.
"""

from __future__ import annotations

import json

import uvicorn
from fastapi import FastAPI

from common.errors import error_body

# Request line and headers together. 16 KiB is h11's own default, made explicit: API keys and the OpenAI
# SDK's headers take well under 2 KiB.
MAX_HEADER_BYTES = 16 * 1024


class HeaderLimit:
    """ASGI wrapper: a request whose header block is over `max_bytes` gets 431 (OpenAI's error shape) and the
    connection is closed; the app never sees it.

    h11 bounds only a header block still incomplete after a read (400, its own text answer): one that arrives
    whole in a single read (up to 64 KiB and more on loopback) passes h11, so it is counted here.
    """

    def __init__(self, app, max_bytes: int = MAX_HEADER_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + sum(
                len(k) + len(v) + 4 for k, v in scope["headers"])  # 4: ": " and CRLF
            if size > self.max_bytes:
                await self._refuse(send, size)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, send, size: int) -> None:
        body = json.dumps(error_body(
            f"the request's headers are too large ({size} bytes; the limit is {self.max_bytes}): send fewer or "
            "shorter headers", "invalid_request_error", "request_header_fields_too_large")).encode()
        await send({"type": "http.response.start", "status": 431, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def server_config(app: FastAPI, **kw) -> uvicorn.Config:
    """uvicorn.Config for `app` with the gateway's HTTP-level bounds; `kw` are further uvicorn.Config options.

    The protocol is pinned to h11, whose bound on an incomplete header block keeps a slowly sent or huge one
    from growing a buffer (httptools, if installed, would take over uvicorn's default `http="auto"`).
    """
    kw.setdefault("log_level", "warning")
    return uvicorn.Config(HeaderLimit(app), http="h11", h11_max_incomplete_event_size=MAX_HEADER_BYTES, **kw)
