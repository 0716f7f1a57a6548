"""Graceful shutdown of a real gateway process (`python -m serving`): SIGTERM drains, then exit 0."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys

import httpx
import pytest

from common.procs import free_port, spawn, stop_group
from loraplex.stack import _wait_ready
from registry.settings import RegistrySettings
from registry.store import ObjectStore
from tests.waiting import wait_until
from training.demo import demo_prompt

DRAIN_TIMEOUT_S = 60


@pytest.fixture()
def gateway_process(engine, seaweed, demo, tmp_path):
    """The gateway as operators run it, in front of the session engine (not managed: it must survive)."""
    bucket, port, admin = "shut-" + secrets.token_hex(4), free_port(), "admin-" + secrets.token_hex(8)
    admin_port = free_port()
    ObjectStore(RegistrySettings(s3_endpoint=seaweed.endpoint, s3_bucket=bucket)).ensure_bucket()
    env = {**os.environ, "LORAPLEX_ENGINE_URL": engine.engine_url, "LORAPLEX_ENGINE_MANAGED": "false",
           "LORAPLEX_S3_ENDPOINT": seaweed.endpoint, "LORAPLEX_S3_BUCKET": bucket,
           "LORAPLEX_BASE_MODEL": str(demo.base_dir), "LORAPLEX_CACHE_DIR": str(tmp_path / "cache"),
           "LORAPLEX_ADMIN_KEY": admin, "LORAPLEX_GATEWAY_PORT": str(port), "LORAPLEX_ADMIN_PORT": str(admin_port),
           "LORAPLEX_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S)}
    log = tmp_path / "gateway.log"
    proc = spawn([sys.executable, "-m", "serving"], log=log, env=env)
    url, ops = f"http://127.0.0.1:{port}", httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", timeout=30,
                                                         headers={"Authorization": f"Bearer {admin}"})
    try:
        _wait_ready(url, 90, {"gateway": proc})
    except (RuntimeError, TimeoutError) as e:
        stop_group(proc.pid, 5)
        pytest.fail(f"{e}:\n{log.read_text()[-3000:]}")
    key = ops.post("/admin/tenants", json={"name": "drainer"}).json()["api_key"]
    yield proc, url, key, log, ops
    ops.close()
    if proc.poll() is None:
        stop_group(proc.pid, 5)


def test_sigterm_drains_in_flight_requests_refuses_new_ones_and_exits_0(gateway_process):
    proc, url, key, log, ops = gateway_process
    headers = {"Authorization": f"Bearer {key}"}
    long = {"model": "base", "prompt": demo_prompt("drain"), "max_tokens": 230, "ignore_eos": True,
            "temperature": 0, "stream": True}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c, c.stream("POST", "/v1/completions",
                                                                                 json=long) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        proc.send_signal(signal.SIGTERM)
        with httpx.Client(base_url=url, timeout=10) as other:
            wait_until(lambda: other.get("/ready").status_code != 200, interval=0.02,
                       what="SIGTERM started a drain")  # within a tick
            ready = other.get("/ready")
            assert ready.status_code == 503 and ready.json()["status"] == "draining"
            refused = other.post("/v1/completions", headers=headers,
                                 json={"model": "base", "prompt": "x", "max_tokens": 1})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "shutting_down"
        assert int(refused.headers["retry-after"]) >= 1
        assert ops.get("/metrics").status_code == 200  # the operators' plane stays up during the drain
        assert proc.poll() is None, "the gateway exited while a request was still streaming"
        events = [json.loads(first[5:])] + [json.loads(line[5:]) for line in lines
                                             if line.startswith("data:") and line.strip() != "data: [DONE]"]
    # the in-flight stream ran to its end: every token, a finish reason, no error event
    assert not any("error" in e for e in events), events[-1]
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert len(events) >= 200, len(events)  # about one event per token of the 230
    code = proc.wait(timeout=DRAIN_TIMEOUT_S + 15)
    assert code == 0, log.read_text()[-3000:]
    # the gateway's own verdict, not the clock (a slow host may take a while over the 230 tokens)
    text = log.read_text()
    assert '"msg": "drained"' in text and "drain timed out" not in text, "it waited for the timeout, not the drain"


def test_the_gateway_freezes_its_startup_heap_and_times_its_collections(gateway_process):
    proc, url, key, log, ops = gateway_process
    frozen = [json.loads(line) for line in log.read_text().splitlines()
              if line.startswith("{") and "start-up heap frozen" in line]
    assert frozen and frozen[0]["objects"] > 10_000, log.read_text()[-2000:]  # modules, routes, clients
    r = httpx.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                   json={"model": "base", "prompt": demo_prompt("heap"), "max_tokens": 4})
    assert r.status_code == 200, r.text
    assert httpx.get(f"{url}/metrics", timeout=30).status_code == 404  # the operators' plane only
    text = ops.get("/metrics").text
    full = [line for line in text.splitlines() if line.startswith('loraplex_gc_pause_seconds_count{generation="2"}')]
    assert full and float(full[0].split()[-1]) >= 1, text[-2000:]  # the freeze's own full collection, at least
