"""Structured JSON logs: one line per request with its id and tenant; never keys, never prompts."""

from __future__ import annotations

import json
import logging
import time
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import error_body

request_id: ContextVar[str] = ContextVar("request_id", default="-")
access = logging.getLogger("loraplex.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage(), "request_id": request_id.get()}
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)  # the line's format is what operators' tools read: kept as it was


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per engine call is noise


class RequestLog:
    """ASGI middleware: assigns X-Request-ID and logs method, path, status, tenant and duration."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4().hex[:16]
        token = request_id.set(rid)
        started, status = time.monotonic(), 500

        started_reply = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_reply
            if message["type"] == "http.response.start":
                status, started_reply = message["status"], True
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if started_reply:
                raise
            # A bug, not the client's mistake: still OpenAI's error shape, with the id that finds it here.
            logging.getLogger(__name__).exception("unhandled error")
            body = json.dumps(error_body(f"internal error (request id {rid}): the operators can look it up",
                                         "server_error", "internal_error")).encode()
            await send_with_id({"type": "http.response.start", "status": 500,
                                "headers": [(b"content-type", b"application/json")]})
            await send_with_id({"type": "http.response.body", "body": body})
        finally:
            tenant = scope.get("state", {}).get("tenant", "-")
            access.info("request", extra={"fields": {
                "method": scope["method"], "path": scope["path"], "status": status, "tenant": tenant,
                "ms": round((time.monotonic() - started) * 1000, 1)}})
            request_id.reset(token)
