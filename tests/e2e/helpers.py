"""Plain helpers of the end-to-end tests (HTTP calls with the checks every test wants)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from serving.state import Gateway


@dataclass
class Stack:
    url: str
    admin_key: str
    gateway: Gateway
    tenants: dict  # tenant -> {"key", "adapter", "task", "version"}

    def client(self, key: str, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=120, **kw)



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
