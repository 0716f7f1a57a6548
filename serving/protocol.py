"""Wire-level helpers of the OpenAI-compatible API: token estimates, the `model` the client sees, SSE lines.

Which request bodies pass is serving/openai_requests.py's job.
"""

from __future__ import annotations

import json
import time

from common.errors import error_body


def estimate_tokens(body: dict) -> int:
    """Tokens a request may cost before it runs (prompt by ~4 chars a token, plus the output cap)."""
    prompt = body.get("prompt", "")
    if "messages" in body:
        prompt = [m.get("content") for m in body["messages"] if isinstance(m, dict)]
    chars = len(json.dumps(prompt)) if not isinstance(prompt, str) else len(prompt)
    out = body.get("max_tokens") or body.get("max_completion_tokens") or 256
    n = body.get("n") or 1
    return chars // 4 + 1 + int(out) * int(n) if isinstance(out, int) and isinstance(n, int) else chars // 4 + 257


def rewrite_model(payload: dict, public_name: str) -> dict:
    """Show the client the model id it asked for, never the engine-side name."""
    if "model" in payload:
        payload["model"] = public_name
    return payload


def sse_json(line: str) -> dict | None:
    """The JSON object of one SSE `data:` line; None for any other line ([DONE], blank, not an object)."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if not data or data == "[DONE]":
        return None
    try:
        chunk = json.loads(data)
    except ValueError:
        return None
    return chunk if isinstance(chunk, dict) else None


def rewrite_sse_line(line: str, public_name: str) -> tuple[str, dict | None]:
    """One SSE line for the client, its `model` rewritten, and the chunk it carried (None: a line that is
    not a JSON `data:` object, passed unchanged), so the relay reads usage without parsing twice."""
    chunk = sse_json(line)
    if chunk is None:
        return line, None
    return "data: " + json.dumps(rewrite_model(chunk, public_name)), chunk


def sse_error(message: str, code: str = "engine_error") -> str:
    return f"data: {json.dumps(error_body(message, code=code))}\n\n"


def model_card(model_id: str, owner: str) -> dict:
    return {"id": model_id, "object": "model", "created": int(time.time()), "owned_by": owner}
