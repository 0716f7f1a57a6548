"""A base the engine cannot load: `loraplex up` and a dedicated engine's start fail fast, naming the cause.

The base is the demo model with a config claiming more layers than its weights hold, which vLLM refuses
("Following weights were not initialized from checkpoint: {'model.layers.2...'}"). Before, `up` waited its
whole ready timeout (420 s) and said only that /ready did not answer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.procs import free_port, port_open
from registry.seaweed import free_port_pair
from tests.waiting import wait_until

pytestmark = pytest.mark.slow
FAST_S = 180  # a failed start on a loaded 2-core host: SeaweedFS, the gateway, the engine's own start


@pytest.fixture(scope="module")
def broken_base(demo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("broken-base")
    for f in demo.base_dir.iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    config = json.loads((out / "config.json").read_text())
    config["num_hidden_layers"] += 2  # layers the checkpoint does not hold
    (out / "config.json").write_text(json.dumps(config))
    return out


def _processes_using(path: Path) -> list[int]:
    """Pids of live processes whose command line mentions `path` (the engine's --model)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(path).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_up_fails_fast_with_the_engines_root_cause(broken_base, tmp_path):
    var = tmp_path / "var"
    ports = {"GATEWAY": free_port(), "ADMIN": free_port(), "S3": free_port_pair(), "ENGINE": free_port()}
    env = {**os.environ, "LORAPLEX_VAR_DIR": str(var), "LORAPLEX_BASE_MODEL": str(broken_base), "COLUMNS": "1000",
           **{f"LORAPLEX_{k}_PORT": str(p) for k, p in ports.items()}}
    for k in ("LORAPLEX_GATEWAY_URL", "LORAPLEX_API_KEY", "LORAPLEX_ADMIN_KEY"):
        env.pop(k, None)
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "loraplex.cli", "up"], env=env, capture_output=True, text=True,
                         timeout=600)
    took = time.monotonic() - started
    said = out.stdout + out.stderr
    engine_log = var / "log" / "engine.log"
    assert out.returncode != 0, said
    assert took < FAST_S, f"up took {took:.0f} s to fail: {said[-2000:]}"
    # vLLM's reason, as its worker logged it (later restarts, stopped by `up`'s clean-up, append to the log)
    assert "Following weights were not initialized from checkpoint" in said and "model.layers." in said, said
    assert str(engine_log) in said, said[-3000:]
    assert "Traceback" not in said  # one clear message, not the launcher's own stack
    wait_until(lambda: not _processes_using(broken_base), timeout=60, what="the failed stack's processes exited")
    assert not any(port_open(p) for p in ports.values())


def test_a_dedicated_engine_fails_fast_with_the_root_cause(broken_base, tmp_path):
    """The separate-model launcher (serving/dedicated_engine.py) on the same base."""
    log = tmp_path / "engine.log"
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "serving.dedicated_engine", "--model", str(broken_base), "--name",
                          "merged", "--port", str(free_port()), "--log", str(log)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stdout + out.stderr
    assert time.monotonic() - started < FAST_S
    assert "Following weights were not initialized" in out.stderr and "model.layers." in out.stderr, out.stderr
    assert str(log) in out.stderr
    wait_until(lambda: not _processes_using(broken_base), timeout=60, what="the engine's processes exited")
