"""Plain helpers of the end-to-end tests (HTTP calls with the checks every test wants).

The stack itself is assembled by loadtest/harness.py, as the benchmarks and the launcher do.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from common.peft_format import ADAPTER_FILES
from loadtest.harness import RunningGateway
from loadtest.harness import start_gateway as _start_gateway
from serving.settings import ServingSettings

Stack = RunningGateway  # what the tests call a gateway they talk to


def start_gateway(engine: ServingSettings, s3_endpoint: str, base_dir: Path, cache_dir: Path) -> Stack:
    """A gateway over real HTTP (uvicorn in a thread) on a fresh `e2e-` bucket; `close()` stops it."""
    return _start_gateway(engine, s3_endpoint, base_dir, cache_dir, bucket_prefix="e2e")


def running_gateway(engine: ServingSettings, seaweed, demo, tmp_path_factory, name: str, **settings):
    """The body of a module fixture (`yield from`): a gateway with `settings` over the session's engine and
    SeaweedFS, stopped when the module is done."""
    st = start_gateway(engine.model_copy(update=settings), seaweed.endpoint, demo.base_dir,
                       tmp_path_factory.mktemp(name))
    yield st
    st.close()


def upload(st: Stack, key: str, name: str, directory: Path, expect: int = 201) -> dict:
    """Upload the adapter in `directory` and check the status (uploads that must fail included)."""
    files = [("files", (f, (directory / f).read_bytes())) for f in ADAPTER_FILES]
    with st.client(key) as c:
        r = c.post(f"/v1/adapters/{name}/versions", files=files)
    assert r.status_code == expect, r.text
    return r.json()


def complete(st: Stack, key: str, model: str, prompt: str, max_tokens: int = 16) -> str:
    with st.client(key) as c:
        r = c.post("/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": max_tokens,
                                             "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


async def complete_concurrently(st, jobs) -> list[str]:
    """The texts of (tenant key, completion body) requests sent all at once, in the order of `jobs`."""
    async with httpx.AsyncClient(base_url=st.url, timeout=300) as c:
        async def one(key, body):
            r = await c.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]
        return await asyncio.gather(*(one(k, b) for k, b in jobs))


def scrape(st: Stack) -> dict[tuple[str, frozenset], float]:
    """Every sample of the gateway's /metrics (operators' plane, admin key), keyed by (sample name, labels),
    parsed by prometheus_client."""
    text = st.metrics_text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def delta(before: dict, after: dict, name: str, **labels) -> float:
    """How much the samples called `name` whose labels include `labels` moved (summed over the rest)."""
    want = set(labels.items())

    def total(snap):
        return sum(v for (n, ls), v in snap.items() if n == name and want <= ls)
    return total(after) - total(before)


def new_tenant(st, quotas: dict | None = None, prefix: str = "met") -> tuple[str, str]:
    """A tenant no other test uses (the metrics registry is shared by every in-process gateway)."""
    name = f"{prefix}-{secrets.token_hex(4)}"
    with st.admin() as c:
        r = c.post("/admin/tenants", json={"name": name, "quotas": quotas or {}})
    assert r.status_code == 201, r.text
    return name, r.json()["api_key"]
