"""The hop part's canned engine behind a real gateway process, set up as `measure_hop` sets it up
(loadtest/latency/run.py `_hop_gateway`, real SeaweedFS): the gateway takes it for an engine, loads an adapter
into it, relays whole and streamed answers under the tenant's public name, and the CPU measurement counts every
request; the least relay on the same HTTP stack (loadtest/latency/min_relay.py), the floor beside it, relays and
is measured the same way. What is under test is the benchmark's measuring path; the relay over a real vLLM
engine is tested in tests/e2e/test_serving.py."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import httpx

from common.procs import free_port
from loadtest.latency import hop, run
from loadtest.latency.run import _hop_gateway


def test_a_gateway_over_the_canned_engine_serves_and_measures(seaweed, demo, tmp_path):
    port = free_port()
    engine = subprocess.Popen([sys.executable, "-m", "loadtest.latency.canned_engine", "--port", str(port)])
    stack = SimpleNamespace(s3_endpoint=seaweed.endpoint, demo=demo)
    try:
        with _hop_gateway(stack, f"http://127.0.0.1:{port}", tmp_path / "gw") as (gw, key, adapter):
            headers = {"Authorization": f"Bearer {key}"}
            whole = httpx.post(gw.running.url + "/v1/completions", headers=headers, timeout=30,
                               json=hop.request_body(adapter, 4, False))
            assert whole.status_code == 200, whole.text
            assert whole.json()["model"] == adapter and whole.json()["usage"]["completion_tokens"] == 4
            stream = httpx.post(gw.running.url + "/v1/completions", headers=headers, timeout=30,
                                json=hop.request_body(adapter, 5, True))
            events = [line for line in stream.text.split("\n") if line.startswith("data: {")]
            assert stream.status_code == 200 and len(events) == 5  # the gateway's own usage chunk is not relayed
            assert all(f'"model":"{adapter}"' in e for e in events) and "lpx:" not in stream.text
            row = hop.cpu_per_request(gw, key, adapter, 16, True, count=20, idle_s=0.5)
            assert row["ok"] == 20 and row["raw_cpu_ms_per_request"] > 0
        # the least relay over the same engine; enough requests that its CPU shows in 10 ms clock ticks (each row
        # in two rounds of half of them)
        floor = run._floor_cpu(f"http://127.0.0.1:{port}", 200, tmp_path)
        assert [(r["relay"], r["stream"], r["ok"]) for r in floor] == [("minimal", False, 200), ("minimal", True, 100)]
        assert all(len(r["rounds_cpu_ms"]) == run.CPU_ROUNDS for r in floor)
        assert all(r["raw_cpu_ms_per_request"] > 0 for r in floor)
    finally:
        engine.terminate()
        engine.wait(timeout=30)
