"""The CLI's HTTP client: everything goes through the gateway's public API (no back doors)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx

from loraplex.settings import StackSettings

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class ApiError(Exception):
    def __init__(self, status: int, body: dict | str):
        err = body.get("error", {}) if isinstance(body, dict) else {}
        self.status, self.code = status, err.get("code")
        super().__init__(f"HTTP {status}: {err.get('message', body)}")


def stack_info(cfg: StackSettings | None = None) -> dict:
    f = (cfg or StackSettings()).stack_file
    return json.loads(f.read_text()) if f.exists() else {}


class GatewayClient:
    def __init__(self, url: str, key: str, timeout: float = 120.0):
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)

    @classmethod
    def from_env(cls, *, admin: bool = False, tenant: str | None = None) -> "GatewayClient":
        """LORAPLEX_GATEWAY_URL / LORAPLEX_API_KEY, else var/stack.json (admin key or a tenant's key)."""
        info = stack_info()
        url = os.environ.get("LORAPLEX_GATEWAY_URL") or info.get("gateway_url")
        if admin:
            key = os.environ.get("LORAPLEX_ADMIN_KEY") or info.get("admin_key")
        elif tenant:
            key = info.get("tenants", {}).get(tenant, {}).get("api_key")
        else:
            key = os.environ.get("LORAPLEX_API_KEY")
        if not url or not key:
            raise SystemExit("no gateway or key: set LORAPLEX_GATEWAY_URL and LORAPLEX_API_KEY "
                             "(or LORAPLEX_ADMIN_KEY), or run `make up` to write var/stack.json")
        return cls(url, key)

    def call(self, method: str, path: str, **kw) -> dict | None:
        r = self.http.request(method, path, **kw)
        if r.status_code >= 400:
            try:
                raise ApiError(r.status_code, r.json())
            except ValueError:
                raise ApiError(r.status_code, r.text) from None
        return r.json() if r.content else None

    def push(self, directory: Path, name: str, metadata: dict | None = None) -> dict:
        """Upload the two PEFT files of `directory` (plus optional training metadata) as a new version."""
        missing = [f for f in ADAPTER_FILES if not (directory / f).is_file()]
        if missing:
            raise SystemExit(f"{directory} lacks {', '.join(missing)}: point at a PEFT adapter directory")
        files = [("files", (f, (directory / f).read_bytes(), "application/octet-stream")) for f in ADAPTER_FILES]
        data = {"metadata": json.dumps(metadata)} if metadata else None
        return self.call("POST", f"/v1/adapters/{name}/versions", files=files, data=data)

    def promote(self, name: str, alias: str, version: str, expected: str | None) -> dict:
        return self.call("PUT", f"/v1/adapters/{name}/aliases/{alias}",
                         json={"version": version, "expected_version": expected})

    def complete(self, model: str, prompt: str, max_tokens: int = 16) -> str:
        out = self.call("POST", "/v1/completions", json={"model": model, "prompt": prompt,
                                                          "max_tokens": max_tokens, "temperature": 0})
        return out["choices"][0]["text"]
