"""The uvicorn configuration of every gateway listener (both planes, `python -m serving` and in-process).

One place for what protects the HTTP layer itself, below the routes: the size of a request's header block.
The protocol is httptools (a C parser, a declared dependency: per request and per streamed chunk it costs less
CPU than the pure-Python h11), with the bound on an incomplete header block that h11 has built in added
(BoundedHttpTools).
"""

from __future__ import annotations

import asyncio
import json

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from common.errors import error_body

# Request line and headers together. 16 KiB is h11's own default, made explicit: API keys and the OpenAI
# SDK's headers take well under 2 KiB.
MAX_HEADER_BYTES = 16 * 1024


class HeaderLimit:
    """ASGI wrapper: a request whose header block is over `max_bytes` gets 431 (OpenAI's error shape) and the
    connection is closed; the app never sees it.

    BoundedHttpTools bounds only a header block still incomplete after a read: one that arrives whole in a
    single read (64 KiB and more on loopback) is counted here.
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
        body = too_large_body(size, self.max_bytes)
        await send({"type": "http.response.start", "status": 431, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def too_large_body(size: int, max_bytes: int) -> bytes:
    return json.dumps(error_body(
        f"the request's headers are too large ({size} bytes or more; the limit is {max_bytes}): send fewer or "
        "shorter headers", "invalid_request_error", "request_header_fields_too_large")).encode()


class BoundedHttpTools(HttpToolsProtocol):
    """httptools with a bound on a header block not yet complete: the parser keeps such a block in memory,
    so one sent slowly or without end is answered 431 (and the connection closed) once the bytes read
    since the request began pass MAX_HEADER_BYTES. A block that arrives whole is counted by HeaderLimit.
    (Bytes of a pipelined request's body read together with the next request's head count too: at most
    one read too many, never a missed bound.)"""

    LINGER_S = 2.0  # after a refusal, what the client still sends is read and dropped this long, then closed

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._head_done, self._head_bytes, self._refused = False, 0, False

    def on_message_begin(self) -> None:
        self._head_done, self._head_bytes = False, 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._head_done = True
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered already: the rest of the block is read and dropped until the close
        super().data_received(data)
        if self._head_done or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEADER_BYTES:
            self._refuse()

    def _refuse(self) -> None:
        """Answer 431 and end the connection without losing the answer: closing a socket with unread bytes
        resets it, and the client's TCP stack then drops the answer it had not read yet (seen in CI). So the
        answer is followed by a FIN (half-close), what still arrives is dropped, and the socket is closed once the
        client closes its side or after LINGER_S."""
        self._refused = True
        body = too_large_body(self._head_bytes, MAX_HEADER_BYTES)
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json"
                             b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\nconnection: close"
                             b"\r\n\r\n" + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            asyncio.get_running_loop().call_later(self.LINGER_S, self.transport.close)
        else:
            self.transport.close()


def server_config(app: FastAPI, **kw) -> uvicorn.Config:
    """uvicorn.Config for `app` with the gateway's HTTP-level bounds; `kw` are further uvicorn.Config options."""
    kw.setdefault("log_level", "warning")
    return uvicorn.Config(HeaderLimit(app), http=BoundedHttpTools, **kw)
