"""loraplex/stack.py's wait for /ready stops at once when the start has failed, and says why."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from common.procs import free_port
from loraplex.stack import StartupFailed, _wait_ready
from serving.engine_log import EngineLog

pytestmark = pytest.mark.unit
CAUSE = "ValueError: Following weights were not initialized from checkpoint: {'model.layers.2.mlp.up_proj.weight'}"


def _unanswered() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_a_gateway_that_exits_is_reported_with_the_cause_from_its_log(tmp_path):
    log = EngineLog.at_end(tmp_path / "gateway.log")
    with open(log.path, "ab") as out:
        p = subprocess.Popen([sys.executable, "-c", "raise ImportError('no module named x')"], stdout=out,
                             stderr=subprocess.STDOUT)
    started = time.monotonic()
    with pytest.raises(StartupFailed, match=r"the gateway exited with code 1 while starting: ImportError: no "
                                            r"module named x \(log: .*gateway.log\)"):
        _wait_ready(_unanswered(), 120, procs={"gateway": (p, log)})
    assert time.monotonic() - started < 60


def test_the_engines_log_saying_its_start_failed_ends_the_wait(tmp_path):
    log = EngineLog.at_end(tmp_path / "engine.log")
    log.path.write_text("ERROR 12-06 00:30:17 [core.py:1510] EngineCore failed to start.\n"
                        "Traceback (most recent call last):\n  File \"x\", line 1\n" + CAUSE + "\n")
    with pytest.raises(StartupFailed) as e:
        _wait_ready(_unanswered(), 120, engine_log=log)
    assert str(e.value) == f"the engine failed to start: {CAUSE} (log: {log.path})"


def test_a_ready_503_that_says_the_engine_failed_ends_the_wait():
    body = json.dumps({"status": "not_ready", "engine": f"the engine exited with code 1 while starting: {CAUSE}",
                       "engine_start_failed": True}).encode()

    class Ready(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(StartupFailed, match="exited with code 1 while starting: ValueError"):
            _wait_ready(f"http://127.0.0.1:{server.server_port}", 120)
    finally:
        server.shutdown()
