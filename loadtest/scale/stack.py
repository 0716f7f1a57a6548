"""The scale benchmark's stack: one vLLM engine and one gateway process (the product's `python -m serving`), the
adapters of a hundred tenants uploaded through the public API, and what the run reads back (/metrics, RSS)."""

from __future__ import annotations

import os
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from common.procs import free_port, spawn, stop_group
from loadtest.harness import RunningGateway, ensure_bucket
from loadtest.hotswap.config import ROOT
from loadtest.hotswap.engines import tree_cpu_s, tree_memory_mb
from loadtest.scale.config import ScaleConfig, ScaleError
from loadtest.scale.driver import Target


@dataclass
class Process:
    name: str
    url: str
    proc: object
    log: Path

    def rss_mb(self) -> float:
        return round(tree_memory_mb(self.proc.pid)[0], 1)

    def cpu_s(self) -> float:
        """CPU seconds used so far by the process and its descendants still alive."""
        return tree_cpu_s(self.proc.pid)

    def stop(self) -> None:
        stop_group(self.proc.pid)


def start_engine(base: Path, cfg: ScaleConfig, log_dir: Path) -> Process:
    """The product's engine command with the run's slots and the largest rank."""
    from serving.engine import engine_command, engine_env
    from serving.settings import ServingSettings

    port = free_port()
    settings = ServingSettings(base_model=base, engine_url=f"http://127.0.0.1:{port}", max_loras=cfg.batch_slots,
                               max_cpu_loras=cfg.max_cpu_loras, max_lora_rank=max(cfg.ranks), engine_dtype=cfg.dtype)
    log = log_dir / "engine.log"
    proc = spawn(engine_command(settings, port), log=log, env=engine_env(settings))
    return Process("engine", settings.engine_url, proc, log)


def start_gateway(base: Path, engine: Process, s3_endpoint: str, cfg: ScaleConfig, disk_bytes: int, work: Path,
                  log_dir: Path) -> tuple[Process, RunningGateway]:
    """`python -m serving` on a fresh bucket, its tiers sized by `cfg`; waits until /ready."""
    bucket, admin_key = f"scale-{secrets.token_hex(4)}", "admin-" + secrets.token_hex(8)
    ensure_bucket(s3_endpoint, bucket)
    port, admin_port = free_port(), free_port()
    env = {**os.environ, "LORAPLEX_S3_ENDPOINT": s3_endpoint, "LORAPLEX_S3_BUCKET": bucket,
           "LORAPLEX_BASE_MODEL": str(base), "LORAPLEX_ENGINE_URL": engine.url, "LORAPLEX_ADMIN_KEY": admin_key,
           "LORAPLEX_GATEWAY_PORT": str(port), "LORAPLEX_ADMIN_PORT": str(admin_port),
           "LORAPLEX_CACHE_DIR": str(work / "cache"), "LORAPLEX_CACHE_MAX_BYTES": str(disk_bytes),
           "LORAPLEX_MAX_LORAS": str(cfg.batch_slots), "LORAPLEX_MAX_CPU_LORAS": str(cfg.max_cpu_loras),
           "LORAPLEX_MAX_LORA_RANK": str(max(cfg.ranks)), "LORAPLEX_MAX_INFLIGHT": str(cfg.max_inflight),
           "LORAPLEX_MAX_QUEUE": "100000", "LORAPLEX_NOOP_PROBE": "false",
           "LORAPLEX_MAX_ADAPTERS_PER_TENANT": "0", "PYTHONPATH": str(ROOT)}
    if not cfg.heavy_limits:
        env.update({"LORAPLEX_FAIR_SLOWDOWN_TOLERANCE": "0", "LORAPLEX_FAIR_SHARE_CAP": "0"})
    log = log_dir / "gateway.log"
    proc = spawn([sys.executable, "-m", "serving"], log=log, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ScaleError(f"the gateway exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    else:
        raise ScaleError(f"the gateway was not ready in 600 s; see {log}")
    return Process("gateway", url, proc, log), RunningGateway(url, admin_key, admin_url=f"http://127.0.0.1:{admin_port}")


def upload_all(gw: RunningGateway, plan: list[tuple[str, str, Path, int]], progress=None,
               warm=lambda _tenant: False) -> list[Target]:
    """Create the tenants of `plan` ((tenant, adapter name, directory, rank)) and upload each adapter, 8 at a
    time (with `warm: true` for the tenants `warm` names: deployed as a platform would, loaded before their
    traffic); returns the targets in plan order."""
    keys = {t: gw.add_tenant(t) for t in dict.fromkeys(t for t, _n, _d, _r in plan)}

    def one(item) -> Target:
        tenant, name, directory, rank = item
        out = gw.publish(keys[tenant], name, directory, warm=warm(tenant))
        if progress:
            progress()
        return Target(tenant, keys[tenant], name, rank, out["size_bytes"], directory.name)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, plan))


def wait_warm(gw: RunningGateway, timeout_s: float = 600) -> float:
    """Wait until the engine tier stops growing (the warm uploads' loads are done); returns what it holds."""
    held, since, deadline = -1.0, time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = total(scrape(gw), "loraplex_tier_adapters", tier="engine")
        if now != held:
            held, since = now, time.monotonic()
        elif time.monotonic() - since > 5:
            break
        time.sleep(1)
    return held


def scrape(gw: RunningGateway) -> dict[tuple[str, frozenset], float]:
    """The gateway's /metrics samples by (name, labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(gw.metrics_text()) for s in family.samples}


def total(snap: dict, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in snap.items() if n == name and want <= ls)


def delta(before: dict, after: dict, name: str, **labels) -> float:
    """How much the counters called `name` whose labels include `labels` grew, series by series: a series that
    went away (the gateway drops the series of a tenant no longer among the busiest) counts nothing, and one
    that restarted lower counts from zero (Prometheus's counter-reset rule)."""
    want = set(labels.items())
    grown = 0.0
    for (n, ls), v in after.items():
        if n == name and want <= ls:
            was = before.get((n, ls), 0.0)
            grown += v - was if v >= was else v
    return grown


def s3_bandwidth(s3_endpoint: str, mib: int = 32) -> float:
    """Bytes per second of one GET of a `mib` MiB object from the run's S3 (the cold start's bound)."""
    from registry.settings import RegistrySettings
    from registry.store import ObjectStore

    bucket = f"scale-bw-{secrets.token_hex(3)}"
    ensure_bucket(s3_endpoint, bucket)
    store = ObjectStore(RegistrySettings(s3_endpoint=s3_endpoint, s3_bucket=bucket))
    store.put("probe", os.urandom(mib * 1024 * 1024))
    best = 0.0
    for _ in range(3):
        started = time.monotonic()
        n = sum(len(c) for c in store.get_chunks("probe"))
        best = max(best, n / (time.monotonic() - started))
    store.delete("probe")
    return best
