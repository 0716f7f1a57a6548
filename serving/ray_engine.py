"""The engine deployment of the Ray Serve mode: each replica owns one vLLM engine with LoRA enabled.

An adapter is a Serve *multiplexed model*: its id is the engine-side name
`lpx:<tenant>:<name>:<version>`, so Ray routes a request to a replica that already holds it, and each
replica keeps at most `capacity` adapters loaded (Ray's LRU). Loading fetches the version from the
registry (S3) into the replica's verified local cache and registers it with the engine; eviction
unregisters it once the adapter's running requests are done. A replica holds nothing that is not in
S3, so replicas can be added, removed or replaced at any time.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
from ray import serve

from common.errors import EngineUnavailable, InvalidRequest, ModelNotFound
from common.names import NAME_RE
from common.procs import free_port, stop_group
from registry.adapter_registry import AdapterRegistry
from registry.cache import ArtifactCache
from registry.manifest import is_version
from registry.store import ObjectStore
from serving.engine import EngineClient, engine_command, engine_env, wait_engine_ready
from serving.ray_settings import RaySettings
from serving.settings import ServingSettings

log = logging.getLogger("loraplex.ray")

ENGINE_PATHS = ("/v1/completions", "/v1/chat/completions")


class EngineDown(EngineUnavailable):
    """This replica's engine is gone and the request never reached it: safe to send elsewhere."""

    code = "engine_unavailable"


def parse_lora_name(lora: str) -> tuple[str, str, str]:
    """(tenant, adapter, version) of an engine-side adapter name; ModelNotFound for anything else."""
    parts = lora.split(":") if isinstance(lora, str) else []
    if (len(parts) != 4 or parts[0] != "lpx" or not NAME_RE.fullmatch(parts[1])
            or not NAME_RE.fullmatch(parts[2]) or not is_version(parts[3])):
        raise ModelNotFound(f"{str(lora)[:100]!r} is not an adapter id (lpx:<tenant>:<name>:<version>)")
    return parts[1], parts[2], parts[3]


def _die_with_parent() -> None:
    """In the engine child: get SIGTERM when the replica process dies, so no engine outlives its replica."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux/glibc: graceful shutdown still stops it
        pass


# Kills the engine's whole process group once the replica process is gone. Ray SIGKILLs a dead worker's
# direct children (the API server) but not their children (vLLM's EngineCore and workers), which would
# keep running; so the watchdog detaches (double fork: not a child Ray would kill) and polls the replica.
_WATCHDOG = """
import os, signal, sys, time
from common.procs import start_ticks as started
_, pg, owner = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
born = started(owner)
if os.fork():
    os._exit(0)
os.setsid()
def stop(*_):
    try:
        os.killpg(pg, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    time.sleep(1)
    try:
        os.killpg(pg, 0)
    except ProcessLookupError:
        os._exit(0)
    if born is None or started(owner) != born:
        stop()
"""


def spawn_engine(settings: ServingSettings, port: int, log_path: Path) -> subprocess.Popen:
    """Start the vLLM server in its own process group, with a watchdog that stops it if this process dies."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(engine_command(settings, port), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=engine_env(settings), start_new_session=True,
                                preexec_fn=_die_with_parent)
    start_watchdog(proc.pid)
    return proc


def start_watchdog(pgid: int, owner: int | None = None) -> None:
    """Detach a tiny process that SIGKILLs process group `pgid` once process `owner` (default: this one)
    is gone, and exits by itself once the group is gone."""
    subprocess.run([sys.executable, "-c", _WATCHDOG, "lpx-engine-watchdog", str(pgid), str(owner or os.getpid())],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   timeout=30)


class LoadedAdapter:
    """One adapter registered in this replica's engine: the object Ray's multiplexing LRU holds.

    Ray calls `__del__` (in a worker thread) when it evicts the adapter; Python may call it again at
    garbage collection, so it acts once. It waits for the adapter's running requests before unloading.
    """

    def __init__(self, name: str, replica: EngineReplica):
        self.name, self.replica = name, replica
        self._inflight = 0
        self._cond = threading.Condition()
        self._gone = False

    def hold(self) -> None:
        with self._cond:
            self._inflight += 1

    def release(self) -> None:
        with self._cond:
            self._inflight -= 1
            self._cond.notify_all()

    def __del__(self) -> None:
        with self._cond:
            if self._gone:
                return
            self._gone = True
            self.replica.resident.discard(self.name)
            drained = self._cond.wait_for(lambda: self._inflight <= 0, timeout=self.replica.drain_timeout_s)
        if not drained:
            log.warning("unloading %s with requests still running", self.name)
        self.replica.unload_now(self.name)


class EngineReplica:
    """One Serve replica: a vLLM engine on a free loopback port, its adapters, its health."""

    async def __init__(self, capacity: int, drain_timeout_s: float, log_dir: str, start_timeout_s: float):
        ctx = serve.get_replica_context()
        self.replica_id = ctx.replica_id.unique_id
        self.drain_timeout_s = drain_timeout_s
        port = free_port()
        self.settings = ServingSettings().model_copy(update={
            "engine_url": f"http://127.0.0.1:{port}", "engine_managed": False})
        self.adapters = AdapterRegistry(ObjectStore(self.settings), self.settings)  # the base's spec from base_model
        self.cache = ArtifactCache(self.settings, self.adapters.open_file)
        self.capacity = capacity
        self.resident: set[str] = set()
        self.loads = self.evictions = self.requests = 0
        self.engine_log = Path(log_dir) / f"ray-engine-{self.replica_id}.log"
        # Spawned on this (the replica's long-lived event-loop) thread: the engine's parent-death signal
        # fires when the spawning thread ends.
        self.proc = spawn_engine(self.settings, port, self.engine_log)
        try:
            await asyncio.to_thread(wait_engine_ready, self.settings.engine_url, start_timeout_s, self.proc)
        except BaseException:
            stop_group(self.proc.pid, 5)
            raise
        self.engine = EngineClient(self.settings)
        self._unload_http = httpx.Client(base_url=self.settings.engine_url, timeout=10)
        log.info("engine replica %s ready: engine pid %s on port %s", self.replica_id, self.proc.pid, port)

    # --- adapters ---------------------------------------------------------------------------------
    async def _load_adapter(self, lora: str) -> LoadedAdapter:
        tenant, name, version = parse_lora_name(lora)
        manifest = await asyncio.to_thread(self.adapters.resolve, tenant, f"{name}@{version}")
        path = await asyncio.to_thread(self.cache.ensure_local, manifest)
        self._check_engine()
        await self.engine.load_lora(lora, path)
        self.loads += 1
        self.resident.add(lora)
        return LoadedAdapter(lora, self)

    def unload_now(self, lora: str) -> None:
        """Unregister `lora` from the engine (called from Ray's eviction thread)."""
        self.evictions += 1
        if self.proc.poll() is not None:
            return  # the engine is gone, and its registrations with it
        try:
            r = self._unload_http.post("/v1/unload_lora_adapter", json={"lora_name": lora})
            if r.status_code not in (200, 404):
                log.warning("the engine refused to unload %s: HTTP %s", lora, r.status_code)
        except httpx.HTTPError as e:
            log.warning("unloading %s failed: %s", lora, type(e).__name__)

    # --- requests ---------------------------------------------------------------------------------
    async def _prepare(self, path: str, body: dict, lora: str | None) -> tuple[dict, dict, LoadedAdapter | None]:
        if path not in ENGINE_PATHS:
            raise InvalidRequest(f"{path!r} is not an inference path")
        self._check_engine()
        self.requests += 1
        held = lora is not None and lora in self.resident
        adapter = None
        if lora is not None:
            adapter = await self.get_adapter(lora)  # the multiplexed loader (see build_engine_deployment)
            adapter.hold()  # at once: no await between the LRU handing it out and the hold
        meta = {"replica": self.replica_id, "resident": held, "loads": self.loads, "evictions": self.evictions}
        return {**body, "model": lora or self.settings.base_name}, meta, adapter

    async def generate(self, path: str, body: dict, lora: str | None = None) -> dict:
        """A non-streaming engine call: `{"status", "body" | "text", **routing metadata}`."""
        body, meta, adapter = await self._prepare(path, body, lora)
        try:
            r = await self._send(path, body)
        finally:
            if adapter:
                adapter.release()
        try:
            return {**meta, "status": r.status_code, "body": r.json()}
        except ValueError:
            return {**meta, "status": r.status_code, "text": r.text[:1000]}

    async def generate_stream(self, path: str, body: dict, lora: str | None = None):
        """A streaming engine call: first the metadata dict (with `status`), then the SSE lines."""
        body, meta, adapter = await self._prepare(path, body, lora)
        try:
            req = self.engine.http.build_request("POST", path, json=body)
            try:
                upstream = await self.engine.http.send(req, stream=True)
            except httpx.HTTPError as e:
                raise await self._failed(e) from e
            try:
                if upstream.status_code != 200:
                    await upstream.aread()
                    yield {**meta, "status": upstream.status_code, "text": upstream.text[:1000]}
                    return
                yield {**meta, "status": 200}
                try:
                    async for line in upstream.aiter_lines():
                        yield line
                except httpx.HTTPError as e:
                    raise EngineUnavailable(f"the engine stream broke ({type(e).__name__}); retry") from e
            finally:
                await upstream.aclose()  # also on cancellation (client gone): vLLM aborts the request
        finally:
            if adapter:
                adapter.release()

    async def _send(self, path: str, body: dict) -> httpx.Response:
        try:
            return await self.engine.http.post(path, json=body)
        except httpx.HTTPError as e:
            raise await self._failed(e) from e

    async def _failed(self, e: httpx.HTTPError) -> EngineUnavailable:
        """Why an engine call failed before any answer came back. If the engine process died (or refused the
        connection), nothing reached the client yet: EngineDown, which the gateway sends to another replica."""
        if isinstance(e, httpx.ConnectError):
            return self._down(e)
        if not isinstance(e, httpx.TimeoutException):
            try:  # a killed engine's sockets close a moment before its exit is visible
                await asyncio.to_thread(self.proc.wait, 2)
            except subprocess.TimeoutExpired:
                pass
            if self.proc.poll() is not None:
                return self._down(e)
        return EngineUnavailable(f"the engine did not answer ({type(e).__name__}); retry")

    def _down(self, cause: Exception | None = None) -> EngineDown:
        code = self.proc.poll()
        why = f"exited with code {code}" if code is not None else f"refused the connection ({type(cause).__name__})"
        return EngineDown(f"the engine of replica {self.replica_id} {why}; Ray replaces the replica")

    def _check_engine(self) -> None:
        if self.proc.poll() is not None:
            raise self._down()

    # --- operations -------------------------------------------------------------------------------
    async def probe(self) -> dict:
        """A real one-token generate on the base model (readiness)."""
        self._check_engine()
        await self.engine.probe()
        return {"replica": self.replica_id}

    def info(self) -> dict:
        """This replica's identity and counters (tests, benchmarks, operators)."""
        return {"replica": self.replica_id, "engine_pid": self.proc.pid, "engine_url": self.settings.engine_url,
                "engine_alive": self.proc.poll() is None, "resident": sorted(self.resident),
                "capacity": self.capacity, "loads": self.loads, "evictions": self.evictions,
                "requests": self.requests, "cache": dict(self.cache.stats), "node": os.uname().nodename}

    async def check_health(self) -> None:
        """Fails once the engine is dead or hung: Ray then replaces this replica (and its engine)."""
        code = self.proc.poll()
        if code is not None:
            await asyncio.to_thread(stop_group, self.proc.pid, 5)  # its EngineCore and workers, if left
            raise RuntimeError(f"the vLLM engine of replica {self.replica_id} exited with code {code}; "
                               f"see {self.engine_log}")
        try:
            r = await self.engine.http.get("/health", timeout=5)
        except httpx.HTTPError as e:
            raise RuntimeError(f"the vLLM engine of replica {self.replica_id} does not answer /health "
                               f"({type(e).__name__})") from e
        if r.status_code != 200:
            raise RuntimeError(f"the vLLM engine of replica {self.replica_id} is unhealthy: HTTP {r.status_code}")

    def __del__(self) -> None:
        """Graceful replica shutdown (scale-down, redeploy, serve.shutdown): stop the engine."""
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            stop_group(proc.pid, 20)


def build_engine_deployment(ray_settings: RaySettings, serving: ServingSettings):
    """The engine deployment with its multiplexing capacity baked in (Ray fixes it at decoration time)."""
    capacity = ray_settings.capacity(serving.max_cpu_loras)

    class LoraEngine(EngineReplica):
        @serve.multiplexed(max_num_models_per_replica=capacity)
        async def get_adapter(self, lora: str) -> LoadedAdapter:
            return await self._load_adapter(lora)

    actor_options = {"num_cpus": ray_settings.engine_replica_cpus}
    if ray_settings.engine_replica_gpus:
        actor_options["num_gpus"] = ray_settings.engine_replica_gpus
    deployment = serve.deployment(
        LoraEngine, name="LoraEngine", num_replicas=ray_settings.engine_replicas,
        max_ongoing_requests=ray_settings.replica_max_ongoing,
        health_check_period_s=ray_settings.health_check_period_s,
        health_check_timeout_s=ray_settings.health_check_timeout_s,
        graceful_shutdown_timeout_s=30, ray_actor_options=actor_options)
    return deployment.bind(capacity, ray_settings.unload_drain_timeout_s, str(Path(ray_settings.log_dir).resolve()),
                           ray_settings.engine_start_timeout_s)
