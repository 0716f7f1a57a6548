"""Relaying an engine's SSE stream to the client as bytes, without parsing every chunk.

The gateway used to decode each line, parse its JSON, set `model` and encode it again: per streamed token
that was most of the relay's CPU. The engine-side name of an adapter (`lpx:<tenant>:<name>:<digest>`) is
unique, and inside a JSON string every `"` is escaped, so the bytes `"model":"<engine name>"` can only be
the chunk's own `model` field: they are replaced as bytes. Only an event that carries a usage object (the
last one, when usage was asked for) is parsed. If the engine name is still in the bytes after the
replacement (another spelling, e.g. with spaces), those events are parsed and rewritten, so the engine-side
name never reaches a client.
"""

from __future__ import annotations

import orjson

EVENT_END = b"\n\n"
CHOICE = b'"choices":[{'  # an event with a choice: about one token
USAGE = b'"usage":{'  # an event with a usage object (null in the others)


class SseRelay:
    """Bytes of the engine's stream in, as they come; bytes for the client out, whole events only.

    Args:
        engine_name: the model name the engine puts in each chunk, or None when it is the public one.
        public: the name the client asked for.
        drop_usage: drop the usage-only event (the gateway asked for it; the client did not).

    Attributes:
        events: events with a choice so far (about one token each).
        usage: the last usage object seen (the engine's count of what it served), or None.
    """

    def __init__(self, engine_name: str | None, public: str, drop_usage: bool = False):
        self.public, self.drop_usage = public, drop_usage
        self.engine_name = engine_name if engine_name and engine_name != public else None
        if self.engine_name is not None:
            self.old = b'"model":' + orjson.dumps(self.engine_name)
            self.new = b'"model":' + orjson.dumps(public)
            self.bare = orjson.dumps(self.engine_name)[1:-1]
        self.events = 0
        self.usage: dict | None = None
        self._buf = b""

    def feed(self, data: bytes) -> bytes:
        """The events that `data` completes, rewritten (b"" while none is complete)."""
        buf = self._buf + data if self._buf else data
        end = buf.rfind(EVENT_END)
        if end < 0:
            self._buf = buf
            return b""
        self._buf = buf[end + len(EVENT_END):]
        return self._events(buf[:end + len(EVENT_END)])

    def flush(self) -> bytes:
        """What is left at the end of the stream (an unterminated last event), rewritten."""
        rest, self._buf = self._buf, b""
        return self._events(rest) if rest else b""

    def _events(self, block: bytes) -> bytes:
        self.events += block.count(CHOICE)
        slow = False
        if self.engine_name is not None:
            block = block.replace(self.old, self.new)
            slow = self.bare in block
        if not slow and USAGE not in block:
            return block
        parts = block.split(EVENT_END)  # the last part is b"" for whole events, else a flushed tail
        out = [self._event(p) for p in parts[:-1]]
        if parts[-1]:
            out.append(self._event(parts[-1], end=b""))
        return b"".join(out)

    def _event(self, event: bytes, end: bytes = EVENT_END) -> bytes:
        """One event parsed line by line: usage noted, `model` set, the usage-only line dropped if asked."""
        lines = [out for out in map(self._line, event.split(b"\n")) if out is not None]
        return b"\n".join(lines) + end if lines else b""

    def _line(self, line: bytes) -> bytes | None:
        chunk = _data(line)
        if chunk is None:
            return line
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
            if self.drop_usage and not chunk.get("choices"):
                return None
        if self.engine_name is None or self.bare not in line or "model" not in chunk:
            return line
        chunk["model"] = self.public
        return b"data: " + orjson.dumps(chunk)


def _data(line: bytes) -> dict | None:
    """The JSON object of a `data:` line; None for any other line ([DONE], comments, not an object)."""
    if not line.startswith(b"data:"):
        return None
    payload = line[5:].strip()
    if not payload or payload == b"[DONE]":
        return None
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return chunk if isinstance(chunk, dict) else None
