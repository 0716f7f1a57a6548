"""Plain helpers of the end-to-end tests (HTTP calls with the checks every test wants)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import SecretStr

from common.procs import free_port
from registry.settings import RegistrySettings
from registry.store import ObjectStore
from serving.app import create_app
from serving.embedded import serve_in_thread
from serving.settings import ServingSettings
from serving.state import Gateway


@dataclass
class Stack:
    url: str
    admin_key: str
    gateway: Gateway
    tenants: dict  # tenant -> {"key", "adapter", "task", "version"}

    def client(self, key: str, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=120, **kw)



def start_gateway(engine: ServingSettings, s3_endpoint: str, base_dir: Path, cache_dir: Path):
    """A gateway over real HTTP (uvicorn in a thread) on a fresh bucket; returns (Stack, server)."""
    reg = RegistrySettings(s3_endpoint=s3_endpoint, s3_bucket="e2e-" + secrets.token_hex(4),
                           cache_dir=cache_dir, base_model=base_dir)
    ObjectStore(reg).ensure_bucket()
    admin_key, port = "admin-" + secrets.token_hex(8), free_port()
    settings = engine.model_copy(update={"admin_key": SecretStr(admin_key), "gateway_port": port})
    gw = Gateway.from_settings(settings, reg)
    server = serve_in_thread(create_app(gw), port)
    return Stack(f"http://127.0.0.1:{port}", admin_key, gw, {}), server


def running_gateway(engine: ServingSettings, seaweed, demo, tmp_path_factory, name: str, **settings):
    """The body of a module fixture (`yield from`): a gateway with `settings` over the session's engine and
    SeaweedFS, stopped when the module is done."""
    st, server = start_gateway(engine.model_copy(update=settings), seaweed.endpoint, demo.base_dir,
                               tmp_path_factory.mktemp(name))
    yield st
    server.should_exit = True


def upload(st: Stack, key: str, name: str, directory: Path, expect: int = 201) -> dict:
    files = [("files", (f, (directory / f).read_bytes())) for f in ("adapter_config.json", "adapter_model.safetensors")]
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
