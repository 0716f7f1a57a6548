"""The benchmark's engine processes: vLLM servers started (or adopted) here, measured and stopped, and the
reload proxy in front of the reload engine."""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common.procs import free_port, spawn, stop_group
from loadtest.hotswap.config import MIB, ROOT, BenchError


def plain_command(model: Path, name: str, port: int) -> list[str]:
    """A vLLM server for one merged model: the product's engine command without LoRA."""
    from serving.engine import engine_command
    from serving.settings import ServingSettings

    return engine_command(ServingSettings(base_model=model, base_name=name, max_model_len=256), port, lora=False)


def _tree(pid: int) -> list:
    """`pid` and all its descendants as psutil processes ([] if it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def process_cpu_s(p) -> float:
    """CPU seconds (user + system) used so far by psutil process `p`."""
    t = p.cpu_times()
    return t.user + t.system


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and its descendants still alive."""
    import psutil

    total = 0.0
    for p in _tree(pid):
        try:
            total += process_cpu_s(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MiB summed over `pid` and all its descendants (PSS counts shared pages once)."""
    import psutil

    procs = _tree(pid)
    rss = pss = 0
    for p in procs:
        try:
            rss += p.memory_info().rss
            pss += getattr(p.memory_full_info(), "pss", 0)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return rss / MIB, pss / MIB


def listening_pid(port: int) -> int | None:
    """The pid of the process listening on 127.0.0.1:`port` (for an engine this harness did not start)."""
    import psutil

    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return conn.pid
    return None


class Engine:
    """One vLLM server process group: started here (or adopted by URL), measured, stopped."""

    def __init__(self, name: str, url: str, pid: int | None, log: Path | None, proc=None):
        self.name, self.url, self.pid, self.log, self.proc = name, url, pid, log, proc
        self.start_s: float | None = None
        self.cold_s: float | None = None  # first request through the gateway after it was up
        self._started = time.monotonic()

    @classmethod
    def start(cls, name: str, cmd_for_port, env: dict, log_dir: Path) -> Engine:
        port = free_port()
        log = log_dir / f"engine-{name}.log"
        proc = spawn(cmd_for_port(port), log=log, env=env)
        return cls(name, f"http://127.0.0.1:{port}", proc.pid, log, proc)

    @classmethod
    def adopt(cls, name: str, url: str) -> Engine:
        """An engine someone else started (e.g. the test session's); never stopped here."""
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        return cls(name, url, listening_pid(port), None, None)

    def wait_ready(self, timeout: float) -> None:
        from serving.engine import wait_engine_ready

        try:
            wait_engine_ready(self.url, timeout, self.proc)
        except Exception as e:
            tail = self.log.read_text()[-3000:] if self.log and self.log.exists() else ""
            raise BenchError(f"engine {self.name} did not start ({e}); log {self.log}:\n{tail}") from None
        if self.start_s is None:
            self.start_s = time.monotonic() - self._started

    def memory_mb(self) -> tuple[float, float]:
        if self.pid is None:
            return 0.0, 0.0
        return tree_memory_mb(self.pid)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc.pid)
            self.proc = None


def start_all(engines: list[Engine], timeout: float) -> None:
    """Wait for engines started together (they share the CPU while starting)."""
    with ThreadPoolExecutor(max(1, len(engines))) as pool:
        list(pool.map(lambda e: e.wait_ready(timeout), engines))



def engine_env(kv_cache_gb: int, dev_mode: bool = False) -> dict:
    """The product's engine environment with the bench's KV cache (the same for every mode)."""
    from serving.engine import engine_env as product_env
    from serving.settings import ServingSettings

    env = product_env(ServingSettings(engine_kv_cache_gb=kv_cache_gb))
    env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gb)  # the same for every mode, whatever the caller set
    if dev_mode:
        env["VLLM_SERVER_DEV_MODE"] = "1"  # /collective_rpc and /reset_prefix_cache: loopback bench engine only
    return env


def available_mb() -> float:
    import psutil

    return psutil.virtual_memory().available / MIB


def start_proxy(rel: Engine, merged: list[Path], log_dir: Path):
    """The reload proxy (loadtest/reload_proxy.py) in front of engine `rel`, switching between `merged` models;
    returns (its process, its URL)."""
    from common.errors import EngineUnavailable
    from serving.engine import wait_engine_ready

    port = free_port()
    models = {f"m{i}": str(path) for i, path in enumerate(merged)}
    proc = spawn([sys.executable, "-m", "loadtest.reload_proxy", "--engine", rel.url, "--port", str(port),
                  "--models", json.dumps(models), "--current", "m0"], log=log_dir / "reload-proxy.log",
                 env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_engine_ready(url, 60, proc)  # the proxy answers /v1/models like an engine
    except EngineUnavailable as e:
        stop_group(proc.pid)
        raise BenchError(f"the reload proxy did not start ({e}); see {log_dir / 'reload-proxy.log'}") from None
    return proc, url
