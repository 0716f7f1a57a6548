"""Reading a request's body with a size limit enforced while the bytes arrive (inference bodies here, uploads
in serving/upload_form.py), and an inference body's UTF-8 JSON that can be forwarded to the engine as it is
(finite numbers, bounded nesting, encodable strings)."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from contextlib import aclosing

from starlette.requests import Request

from common.errors import InvalidRequest, RequestTooLarge

INFERENCE_LIMIT = ("LORAPLEX_MAX_REQUEST_BYTES", "send a shorter prompt or fewer messages")


async def read_limited(request: Request, limit: int) -> bytes:
    """The body of `request`, or RequestTooLarge (413) as soon as it exceeds `limit` bytes: counted while
    reading, so a chunked body without Content-Length is stopped too, before it is held in memory."""
    chunks = []
    async with aclosing(limited_stream(request, limit, *INFERENCE_LIMIT)) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    return b"".join(chunks)


async def limited_stream(request: Request, limit: int, setting: str, fix: str) -> AsyncIterator[bytes]:
    """The chunks of `request`'s body as they arrive; RequestTooLarge (413, naming `setting` and saying `fix`)
    before the first chunk if Content-Length is over `limit`, else as soon as more than `limit` bytes came
    (a chunked body has no Content-Length to trust)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit, f"Content-Length {declared}", setting, fix)
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit, f"more than {limit} bytes", setting, fix)
        yield chunk


def too_large(limit: int, got: str, setting: str, fix: str) -> RequestTooLarge:
    return RequestTooLarge(f"the request body is too large ({got}); the limit is {limit} bytes ({setting}): {fix}")


def load_json(raw: bytes, max_depth: int) -> object:
    """The JSON value of `raw`, else InvalidRequest: not UTF-8, not JSON, NaN or Infinity (JSON has neither,
    Python's parser accepts them, the engine's does not), nested deeper than `max_depth`, or a string with a
    lone UTF-16 surrogate (JSON's \\ud800 escapes can spell one; it cannot be encoded to send on)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequest(f"the request body is not UTF-8 text (invalid byte at offset {e.start}): send "
                             "JSON encoded as UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise _too_deep(max_depth) from None
    except ValueError as e:
        raise InvalidRequest(f"the request body is not valid JSON: {str(e)[:200]}") from None
    _check_tree(value, max_depth)
    return value


def _too_deep(max_depth: int) -> InvalidRequest:
    return InvalidRequest(f"the request body is nested too deeply (at most {max_depth} levels)")


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _check_tree(value: object, max_depth: int) -> None:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise _too_deep(max_depth)
        if isinstance(node, dict):
            for key, item in node.items():
                _encodable(key)
                stack.append((item, depth + 1))
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
        elif isinstance(node, str):
            _encodable(node)


def _encodable(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("the request body holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff "
                             "escape): send valid Unicode text") from None
