"""`loraplex demo` / `up` / `status` / `down` as a user runs them: real processes, real ports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from common.procs import free_port, pid_alive, port_open
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
    (var / "adapters").symlink_to(demo.var_dir / "adapters")
    ports = {"GATEWAY": free_port(), "S3": free_port(), "ENGINE": free_port()}
    env = {**os.environ, "LORAPLEX_VAR_DIR": str(var), "COLUMNS": "200",
           **{f"LORAPLEX_{k}_PORT": str(p) for k, p in ports.items()}}
    for k in ("LORAPLEX_GATEWAY_URL", "LORAPLEX_API_KEY", "LORAPLEX_ADMIN_KEY", "LORAPLEX_BASE_MODEL"):
        env.pop(k, None)
    try:
        out = _cli(["demo"], env)
        assert out.returncode == 0, out.stdout + out.stderr
        info = json.loads((var / "stack.json").read_text())
        assert {"gateway_url", "engine_url", "admin_key", "s3_endpoint", "bucket", "base_model", "tenants"} <= set(info)
        assert info["gateway_url"] == f"http://127.0.0.1:{ports['GATEWAY']}"
        for spec in DEMO_TENANTS:
            assert info["tenants"][spec["tenant"]]["adapters"] == [spec["adapter"]]
            assert answer(spec["task"], DEMO_WORDS[0]) in out.stdout
        assert httpx.get(f"{info['gateway_url']}/ready", timeout=30).status_code == 200
        assert _cli(["status"], env).returncode == 0
        # a second demo run reuses everything (idempotent) and keeps working keys
        again = _cli(["demo"], env)
        assert again.returncode == 0, again.stderr
        assert json.loads((var / "stack.json").read_text())["tenants"] == info["tenants"]
        pids = [int(p.read_text()) for p in (var / "run").glob("*.pid")]
        assert len(pids) == 3
    finally:
        down = _cli(["down"], env)
    assert down.returncode == 0, down.stderr
    assert not any(pid_alive(p) for p in pids)
    assert not any(port_open(p) for p in ports.values())
    assert _cli(["status"], env).returncode == 1
