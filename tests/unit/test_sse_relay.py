"""The byte relay of streamed answers (serving/sse_relay.py): the engine-side name never reaches the client,
usage is read from the last chunk, and however the engine's bytes are cut the client gets whole events."""

from __future__ import annotations

import json

import pytest

from serving.sse_relay import SseRelay

LORA = "lpx:acme:rev:0123456789abcdef"


def _event(obj) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _stream(n_tokens: int = 3, usage: bool = True, model: str = LORA) -> bytes:
    chunks = [_event({"id": "c", "model": model, "choices": [{"index": 0, "text": f"t{i}"}], "usage": None})
              for i in range(n_tokens)]
    if usage:
        counts = {"prompt_tokens": 4, "completion_tokens": n_tokens, "total_tokens": 4 + n_tokens}
        chunks.append(_event({"id": "c", "model": model, "choices": [], "usage": counts}))
    return b"".join(chunks) + b"data: [DONE]\n\n"


def _relay(relay: SseRelay, data: bytes, step: int) -> tuple[bytes, list[bytes]]:
    """Feed `data` in pieces of `step` bytes; returns everything out and each non-empty output."""
    outs = [relay.feed(data[i:i + step]) for i in range(0, len(data), step)] + [relay.flush()]
    outs = [o for o in outs if o]
    return b"".join(outs), outs


@pytest.mark.parametrize("step", [1, 7, 64, 10_000])
def test_the_engine_name_is_rewritten_and_usage_taken_however_the_bytes_are_cut(step):
    relay = SseRelay(LORA, "rev", drop_usage=True)
    out, outs = _relay(relay, _stream(), step)
    assert out == _stream(usage=False, model="rev")  # the usage-only chunk the gateway asked for is dropped
    assert relay.usage == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7} and relay.events == 3
    assert all(o.endswith(b"\n\n") for o in outs)  # only whole events go out


def test_a_client_that_asked_for_usage_gets_it_with_the_public_name():
    relay = SseRelay(LORA, "rev@prod", drop_usage=False)
    out, _ = _relay(relay, _stream(2), 10_000)
    assert out == _stream(2, model="rev@prod") and relay.usage["total_tokens"] == 6


def test_another_spelling_of_the_name_is_parsed_so_it_never_shows():
    spaced = b'data: {"model": "' + LORA.encode() + b'", "choices": [{"text": "x"}]}\n\ndata: [DONE]\n\n'
    out, _ = _relay(SseRelay(LORA, "rev"), spaced, 5)
    assert LORA.encode() not in out
    assert json.loads(out.split(b"\n\n")[0][5:]) == {"model": "rev", "choices": [{"text": "x"}]}


def test_the_name_inside_generated_text_is_left_alone():
    # a quote inside a JSON string is escaped, so text cannot fake the `"model":"..."` bytes
    text = f'"model":"{LORA}"'
    data = _event({"model": LORA, "choices": [{"text": text}]})
    out, _ = _relay(SseRelay(LORA, "rev"), data, 3)
    assert json.loads(out[5:]) == {"model": "rev", "choices": [{"text": text}]}


def test_the_base_model_and_an_unterminated_tail_pass_as_they_are():
    data = _stream(2, model="base")[:-2]  # the last event lacks its blank line
    relay = SseRelay(None, "base", drop_usage=False)
    out, _ = _relay(relay, data, 9)
    assert out == data and relay.events == 2 and relay.usage["completion_tokens"] == 2
