"""A client that disconnects from a non-streamed or still-queued request: the engine stops generating for it, or
never sees it, and the gateway gives its slot back (serving/disconnect.py; unit tests: tests/unit/test_disconnect.py).

The client is a raw socket, so that the test decides when the connection closes. Outcomes are read from the
gateway's own metrics registry (it runs in this process) and from the engine's /metrics.
"""

from __future__ import annotations

import json
import secrets
import socket

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.helpers import running_gateway
from tests.waiting import wait_until
from training.demo import demo_prompt

MAX_TOKENS = 230  # about all the context (256) leaves after the prompt; ignore_eos makes it generate all of them


def _engine(url: str, name: str) -> float:
    """The sum of the engine's /metrics samples called `name` (over its label sets)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def _gateway(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _open(url: str, key: str, stream: bool = False) -> socket.socket:
    """Send a long completion over a socket of our own and return the socket, the answer left unread."""
    u = httpx.URL(url)
    body = json.dumps({"model": "base", "prompt": demo_prompt("abc"), "max_tokens": MAX_TOKENS,
                       "temperature": 0, "ignore_eos": True, "stream": stream}).encode()
    sock = socket.create_connection((u.host, u.port), timeout=60)
    sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: {u.host}:{u.port}\r\nAuthorization: Bearer {key}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def _new_tenant(st, prefix: str) -> tuple[str, str]:
    name = f"{prefix}-{secrets.token_hex(4)}"
    return name, st.add_tenant(name)


def _engine_idle(url: str) -> bool:
    return _engine(url, "vllm:num_requests_running") == 0 and _engine(url, "vllm:num_requests_waiting") == 0


def _requests(labels: dict, status: str) -> float:
    return _gateway("loraplex_requests_total", status=status, **labels)


def _leave_while_running(st, url: str) -> int | None:
    """One attempt: a new tenant's request, its socket closed once the engine runs it. The tokens the engine
    generated for it, or None when it finished before the gateway saw the hang-up."""
    tenant, key = _new_tenant(st, "cancel")
    labels = {"tenant": tenant, "adapter": "base"}
    wait_until(lambda: _engine_idle(url) and st.gateway.admission.idle, what="the engine and gateway idle")
    tokens = _engine(url, "vllm:generation_tokens_total")
    sock = _open(st.url, key)
    try:
        wait_until(lambda: _engine(url, "vllm:num_requests_running") >= 1 or _requests(labels, "ok"),
                   interval=0.005, what="the request running in the engine")
    finally:
        sock.close()
    wait_until(lambda: _requests(labels, "disconnected") or _requests(labels, "ok"), what="the request's end")
    if not _requests(labels, "disconnected"):
        return None
    wait_until(lambda: _engine_idle(url), what="the engine stopped the request")
    wait_until(lambda: st.gateway.admission.idle, what="the gateway gave the slot back")
    return int(_engine(url, "vllm:generation_tokens_total") - tokens)


def test_a_non_streamed_request_whose_client_leaves_is_aborted_in_the_engine(stack, engine):
    """Disconnected once it runs in the engine: the engine stops generating for it well before its
    max_tokens, and the gateway counts it as disconnected and frees its slot.

    A fast host may finish the generation before the hang-up reaches the gateway; such an attempt (the
    gateway saw it end `ok`) says nothing and is repeated."""
    for _ in range(5):
        generated = _leave_while_running(stack, engine.engine_url)
        if generated is not None:
            break
    else:
        pytest.fail(f"in 5 attempts the gateway never saw the client leave: each request ran its {MAX_TOKENS} tokens")
    assert generated < MAX_TOKENS, f"the engine generated all {generated} tokens for a client that had left"


@pytest.fixture(scope="module")
def one_slot_gateway(engine, seaweed, demo, tmp_path_factory):
    """A gateway that forwards one request at a time and lets a few wait."""
    yield from running_gateway(engine, seaweed, demo, tmp_path_factory, "cache-cancel", max_inflight=1,
                               max_queue=4)


def _leave_while_queued(st, filler: str) -> dict | None:
    """One attempt: a stream of `filler` holds the only slot, a new tenant's request waits and its socket is
    closed. The tenant's metric labels, or None when the holder ended before the hang-up was seen."""
    tenant, key = _new_tenant(st, "leave")  # each attempt its own series
    labels = {"tenant": tenant, "adapter": "base"}
    admission = st.gateway.admission
    wait_until(lambda: admission.idle, what="the gateway idle")
    holder = _open(st.url, filler, stream=True)
    waiter = None
    try:
        wait_until(lambda: admission.inflight == 1, interval=0.005, what="the holder admitted")
        waiter = _open(st.url, key)
        wait_until(lambda: admission.active.get(tenant, 0) == 1, interval=0.005, what="the request queued")
        waiter.close()
        wait_until(lambda: admission.active.get(tenant, 0) == 0, what="the request left the gateway")
    finally:
        holder.close()
        if waiter is not None:
            waiter.close()
    wait_until(lambda: admission.idle, what="the holder's slot given back")
    if _gateway("loraplex_rejected_total", status="499", reason="disconnected", **labels) != 1:
        return None
    return labels


def test_a_queued_request_whose_client_leaves_is_never_sent_to_the_engine(one_slot_gateway):
    """A long stream holds the only slot; another tenant's request waits for it, its client leaves: the
    request leaves the queue at once (counted as disconnected), is never admitted, and the holder's end
    leaves the gateway idle.

    A fast host may end the holder before the waiting request's hang-up is seen; such an attempt (the waiter
    got the slot) says nothing and is repeated."""
    st = one_slot_gateway
    _, filler = _new_tenant(st, "hold")
    for _ in range(5):
        labels = _leave_while_queued(st, filler)
        if labels is not None:
            break
    else:
        pytest.fail("in 5 attempts the waiting request never left the queue with its client: it got the slot")
    assert st.gateway.admission.queued == 0
    assert _gateway("loraplex_admission_wait_seconds_count", **labels) == 0, "the request was admitted"
    assert not any(_requests(labels, s) for s in ("ok", "error", "disconnected")), "it reached the engine"
