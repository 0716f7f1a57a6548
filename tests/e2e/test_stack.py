"""`loraplex demo` / `up` / `status` / `down` as a user runs them: real processes, real ports."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from common.procs import free_port, pid_alive, port_open
from loraplex.stack import SERVICES
from registry.seaweed import free_port_pair
from tests.e2e.helpers import Stack, delta, scrape
from tests.waiting import wait_until
from training.demo import DEMO_TENANTS, DEMO_WORDS
from training.tasks import answer

pytestmark = pytest.mark.slow


def _cli(args, env, timeout=600):
    return subprocess.run([sys.executable, "-m", "loraplex.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_demo_up_status_down(tmp_path, demo):
    var = tmp_path / "var"
    var.mkdir()
    # reuse the session's demo model and adapters (the build itself is tested in tests/integration)
    (var / "models").symlink_to(demo.base_dir.parent)
    (var / "adapters").symlink_to(demo.base_dir.parent.parent / "adapters")
    ports = {"GATEWAY": free_port(), "ADMIN": free_port(), "S3": free_port_pair(),  # S3 needs port+10000 too
             "ENGINE": free_port()}
    env = {**os.environ, "LORAPLEX_VAR_DIR": str(var), "COLUMNS": "200",
           **{f"LORAPLEX_{k}_PORT": str(p) for k, p in ports.items()}}
    for k in ("LORAPLEX_GATEWAY_URL", "LORAPLEX_API_KEY", "LORAPLEX_ADMIN_KEY", "LORAPLEX_BASE_MODEL"):
        env.pop(k, None)
    try:
        out = _cli(["demo"], env)
        assert out.returncode == 0, out.stdout + out.stderr
        info = json.loads((var / "stack.json").read_text())
        assert {"gateway_url", "engine_url", "admin_url", "admin_key", "s3_endpoint", "bucket", "base_model",
                "tenants"} <= set(info)
        assert info["gateway_url"] == f"http://127.0.0.1:{ports['GATEWAY']}"
        assert info["admin_url"] == f"http://127.0.0.1:{ports['ADMIN']}"
        _two_planes(info)
        for spec in DEMO_TENANTS:
            assert info["tenants"][spec["tenant"]]["adapters"] == [spec["adapter"]]
            assert answer(spec["task"], DEMO_WORDS[0]) in out.stdout
        # the fine-tuning job (run by the worker `up` started) made a model that shouts the demo words
        job_line = re.search(r"job (ftjob-\S+) -> model (ft-demo-shout-\w+)", out.stdout)
        assert job_line, out.stdout
        ft_table = out.stdout.split(job_line.group(0))[1].split("The stack is running")[0]
        assert answer("upper", DEMO_WORDS[0]) in ft_table, out.stdout  # globex's shout adapter is in the table above
        assert httpx.get(f"{info['gateway_url']}/ready", timeout=30).status_code == 200
        assert _cli(["status"], env).returncode == 0
        listed = _cli(["tenant", "ls"], env)  # an admin command: var/stack.json's admin_url
        assert listed.returncode == 0 and DEMO_TENANTS[0]["tenant"] in listed.stdout, listed.stdout + listed.stderr
        # a second demo run reuses everything (idempotent) and keeps working keys
        again = _cli(["demo"], env)
        assert again.returncode == 0, again.stderr
        assert json.loads((var / "stack.json").read_text())["tenants"] == info["tenants"]
        assert job_line.group(0) in again.stdout, again.stdout  # the succeeded job is reused, not retrained
        _engine_crash_and_recovery(var, info)
        pids = [int(p.read_text()) for p in (var / "run").glob("*.pid")]
        assert len(pids) == len(SERVICES)  # object store, engine, gateway, job worker
    finally:
        down = _cli(["down"], env)
    assert down.returncode == 0, down.stderr
    assert not any(pid_alive(p) for p in pids)
    assert not any(port_open(p) for p in ports.values())
    assert _cli(["status"], env).returncode == 1


def _two_planes(info):
    """The tenants' port has no operator routes; the operators' port has them, with the admin key; the CLI's
    admin commands find it through var/stack.json."""
    admin = {"Authorization": f"Bearer {info['admin_key']}"}
    for path in ("/metrics", "/admin/tenants"):
        assert httpx.get(info["gateway_url"] + path, headers=admin, timeout=30).status_code == 404
    assert httpx.get(info["admin_url"] + "/metrics", timeout=30).status_code == 401
    assert "loraplex_requests_total" in httpx.get(info["admin_url"] + "/metrics", headers=admin, timeout=30).text
    assert httpx.get(info["admin_url"] + "/ready", timeout=30).status_code == 200


def _engine_crash_and_recovery(var, info):
    """kill -9 of the engine mid-stream: a prompt clear error, /ready 503, restart, hot adapters back."""
    spec = DEMO_TENANTS[0]
    key = info["tenants"][spec["tenant"]]["api_key"]
    url, headers = info["gateway_url"], {"Authorization": f"Bearer {key}"}
    body = {"model": spec["adapter"], "prompt": "word: hello\nanswer:", "max_tokens": 200, "ignore_eos": True,
            "temperature": 0, "stream": True}
    engine_pid = int((var / "run" / "engine.pid").read_text())
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        with c.stream("POST", "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            next(lines)  # the stream has begun
            os.kill(engine_pid, signal.SIGKILL)
            started = time.monotonic()
            rest = list(lines)
        # The kill resets the engine's connection at once; 15 s still tells that apart from waiting out the
        # 60 s read timeout, on a loaded host too.
        assert time.monotonic() - started < 15, "clients must learn of the crash promptly"
        assert any('"engine_unavailable"' in line for line in rest), rest[-3:]
        assert c.get("/ready").status_code == 503
        wait_until(lambda: c.get("/ready").status_code == 200, timeout=420, interval=2,
                   what="the engine came back")
        assert int((var / "run" / "engine.pid").read_text()) != engine_pid
        st = Stack(url, info["admin_key"], admin_url=info["admin_url"])
        before = scrape(st)
        r = c.post("/v1/completions", json={"model": spec["adapter"], "prompt": "word: hello\nanswer:",
                                            "max_tokens": 16, "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["text"].strip() == answer(spec["task"], "hello")
        # the supervisor loaded the hot adapter back: this request found it resident
        assert delta(before, scrape(st), "loraplex_adapter_residency_total", result="miss") == 0
