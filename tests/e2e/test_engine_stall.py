"""An engine that stops answering: the session's real vLLM engine, its processes stopped (SIGSTOP) mid-stream or
before it answers. After `engine_timeout_s` without data the gateway ends the stream with an error event, or
answers 503, counts an error, frees the slot; once the engine runs again it serves as before.

The bound between two reads is serving/transport/deadline.py (unit tests: tests/unit/test_read_deadline.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time

import httpx
import psutil
import pytest
from prometheus_client import REGISTRY

from common.errors import LoraplexError
from serving.engine import EngineClient
from serving.metric_labels import OTHER_TENANTS
from tests.e2e.helpers import running_gateway
from tests.waiting import wait_until
from training.demo import demo_prompt

TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def stall_gateway(engine, seaweed, demo, tmp_path_factory):
    yield from running_gateway(engine, seaweed, demo, tmp_path_factory, "cache-stall", engine_timeout_s=TIMEOUT_S)


@contextlib.contextmanager
def engine_stopped(url: str):
    """The engine's whole process group (API server and engine core) stopped, continued on leaving."""
    port = httpx.URL(url).port
    pid = next(c.pid for c in psutil.net_connections("tcp")
               if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid)
    group = os.getpgid(pid)
    os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(group, signal.SIGCONT)


def _body(stream: bool) -> dict:
    return {"model": "base", "prompt": demo_prompt("stall"), "max_tokens": 200, "temperature": 0,
            "ignore_eos": True, "stream": stream}


def _errors(tenant: str) -> float:
    """The gateway's count of base-model requests that ended in an engine error under `tenant`'s label or the
    label of tenants not named (metric_labels.py names 20 at once; the in-process gateway's registry)."""
    return sum(REGISTRY.get_sample_value("loraplex_requests_total",
                                         {"tenant": label, "adapter": "base", "status": "error"}) or 0.0
               for label in (tenant, OTHER_TENANTS))


def _engine_answers(engine) -> bool:
    """The gateway's own readiness generate (`EngineClient.probe`), sent to the engine directly."""
    async def probe() -> bool:
        client = EngineClient(engine)
        try:
            await client.probe()
            return True
        except LoraplexError:
            return False
        finally:
            await client.aclose()

    return asyncio.run(probe())


def _serves_again(st, key: str, engine) -> None:
    """The engine, continued, answers a request through the same gateway. The engine first works off what piled
    up while it was stopped (the stalled request's abort among it): on a loaded host that took longer than the
    gateway's 3 s timeout (a 503 in CI), so the gateway is asked once the engine answers directly again."""
    wait_until(lambda: _engine_answers(engine), timeout=120, interval=0.5, what="the continued engine answers")
    with st.client(key) as c:
        r = c.post("/v1/completions", json={**_body(False), "max_tokens": 4})
    assert r.status_code == 200, r.text


def test_a_stream_the_engine_stops_feeding_ends_with_an_error_event_after_the_timeout(stall_gateway, engine):
    st = stall_gateway
    key = st.add_tenant("stall-stream")
    errors = _errors("stall-stream")
    events, error, gap = [], None, None
    with st.client(key) as c, c.stream("POST", "/v1/completions", json=_body(True)) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
                if len(events) == 2:
                    break
        with engine_stopped(engine.engine_url):
            stopped = time.monotonic()
            for line in lines:
                if line.startswith("data: {") and "error" in line:
                    gap, error = time.monotonic() - stopped, json.loads(line[6:])["error"]
                    break
    assert error is not None, "the stream ended without an error event"
    assert error["code"] == "engine_unavailable", error
    # Chunks already in flight may come first; the error comes once TIMEOUT_S pass with none.
    assert TIMEOUT_S * 0.9 <= gap < TIMEOUT_S * 4, f"the error came {gap:.1f} s after the engine stopped"
    wait_until(lambda: st.gateway.admission.idle, what="the gateway gave the slot back")
    assert _errors("stall-stream") - errors == 1, "the gateway did not count the request as an engine error"
    _serves_again(st, key, engine)


def test_a_request_the_engine_does_not_answer_gets_503_after_the_timeout(stall_gateway, engine):
    st = stall_gateway
    key = st.add_tenant("stall-whole")
    errors = _errors("stall-whole")
    with engine_stopped(engine.engine_url):
        start = time.monotonic()
        with st.client(key) as c:
            r = c.post("/v1/completions", json=_body(False))
        took = time.monotonic() - start
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "engine_unavailable"
    assert "retry" in r.json()["error"]["message"]
    assert TIMEOUT_S * 0.9 <= took < TIMEOUT_S * 4, f"answered {took:.1f} s after it was sent"
    wait_until(lambda: st.gateway.admission.idle, what="the gateway gave the slot back")
    assert _errors("stall-whole") - errors == 1, "the gateway did not count the request as an engine error"
    _serves_again(st, key, engine)
