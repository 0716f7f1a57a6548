"""A row's gateway and tenants (through the stack harness), its locust run, and single timed requests."""

from __future__ import annotations

import os
import random
import secrets
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx

from common.api_client import ApiError
from loadtest.harness import RunningGateway, start_gateway
from loadtest.hotswap.config import ROOT, BenchError
from loadtest.workload import TenantSpec, Workload, make_prompt, read_samples, to_env

LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"


def bench_gateway(s3_endpoint: str, base: Path, engine_url: str, work: Path, max_rank: int, max_loras: int,
                  max_inflight: int, dedicated: dict | None = None) -> RunningGateway:
    """The product's gateway (in a thread of this process) on a fresh bucket, tuned alike for every mode."""
    from serving.settings import ServingSettings

    settings = ServingSettings(base_model=base, engine_url=engine_url, max_loras=max_loras, max_cpu_loras=max_loras,
                               max_lora_rank=max_rank, max_inflight=max_inflight, max_queue=4096,
                               dedicated_engines=dedicated or {})
    return start_gateway(settings, s3_endpoint, base, work / "cache" / secrets.token_hex(4), bucket_prefix="hotswap")


def add_tenants(gw: RunningGateway, names: list[str], models: list[str], adapters: list[Path | None]) -> None:
    """Create tenants through the admin API and upload their adapters (None: a dedicated engine serves it);
    `gw.tenants` maps each to its TenantSpec."""
    for name, model, adapter in zip(names, models, adapters):
        try:
            key = gw.add_tenant(name)
            if adapter is not None:
                gw.publish(key, model, adapter)
        except ApiError as e:
            raise BenchError(f"setting up tenant {name} ({adapter or model}) failed: {e}") from None
        gw.tenants[name] = TenantSpec(name, key, model)


def specs(gw: RunningGateway) -> list[TenantSpec]:
    """The gateway's tenants in the order they were added (the order of their popularity)."""
    return list(gw.tenants.values())


def timed_request(gw: RunningGateway, tenant: TenantSpec, prompt_tokens: int) -> float:
    """Seconds for one 1-token completion of `tenant` through the gateway (raises if it fails)."""
    body = {"model": tenant.model, "prompt": make_prompt(prompt_tokens, random.Random(7)), "max_tokens": 1,
            "temperature": 0}
    started = time.monotonic()
    r = httpx.post(f"{gw.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {tenant.api_key}"},
                   timeout=600)
    if r.status_code != 200:
        raise BenchError(f"request of {tenant.name} ({tenant.model}) failed: HTTP {r.status_code} {r.text[:300]}")
    return time.monotonic() - started


def run_locust(url: str, workload: Workload, duration_s: float, prefix: Path) -> list[dict]:
    """Run the locustfile headless in its own process (gevent stays out of this one); returns its samples.

    Writes locust's CSV files at `prefix`_stats.csv etc. and the per-request samples at `prefix`.jsonl.
    """
    samples = prefix.with_suffix(".jsonl")
    samples.unlink(missing_ok=True)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    users = len(workload.tenants)
    env = {**os.environ, **to_env(replace(workload, samples=samples)), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r", "1000",
           "-t", f"{max(1, round(duration_s))}s", "--host", url, "--csv", str(prefix), "--only-summary",
           "--loglevel", "WARNING", "--exit-code-on-error", "0"]
    try:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=duration_s + workload.drain_s + 180)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"locust did not finish in time: {(e.stdout or '')[-1500:]}") from None
    (prefix.parent / f"{prefix.name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise BenchError(f"locust failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return read_samples(samples)



def unload_own(engine_url: str, tenants: list[TenantSpec]) -> None:
    """Unload this run's adapters from the engine (it may be shared, e.g. the test session's)."""
    prefixes = tuple(f"lpx:{t.name}:" for t in tenants)
    try:
        loaded = [m["id"] for m in httpx.get(f"{engine_url}/v1/models", timeout=10).json()["data"]]
        for name in loaded:
            if name.startswith(prefixes):
                httpx.post(f"{engine_url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=30)
    except (httpx.HTTPError, ValueError, KeyError):
        pass  # the engine is going away anyway

