"""The CLI's HTTP client: the API client (common/api_client.py) plus where the CLI finds its gateway and
keys (LORAPLEX_* variables or var/stack.json) and the model-artifact transfers. No back doors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from common.api_client import ADAPTER_FILES, ADAPTERS_API, MODELS_API, ApiClient, ApiError, Progress, ProgressFile
from loraplex.settings import ClientSettings, StackSettings

__all__ = ["ADAPTER_FILES", "ADAPTERS_API", "MODELS_API", "ApiError", "GatewayClient", "ProgressFile", "stack_info"]


def _secret(value) -> str | None:
    return value.get_secret_value() if value is not None else None


def stack_info(cfg: StackSettings | None = None) -> dict:
    f = (cfg or StackSettings()).stack_file
    return json.loads(f.read_text()) if f.exists() else {}


class GatewayClient(ApiClient):
    @classmethod
    def from_env(cls, *, admin: bool = False, tenant: str | None = None) -> GatewayClient:
        """LORAPLEX_GATEWAY_URL / LORAPLEX_API_KEY, else var/stack.json (admin key or a tenant's key).

        `admin`: the operator plane, LORAPLEX_ADMIN_URL, else var/stack.json's `admin_url` (unless
        LORAPLEX_GATEWAY_URL names another gateway than the stack's)."""
        cfg, client = StackSettings(), ClientSettings()
        info = stack_info(cfg)
        url = client.gateway_url or info.get("gateway_url")
        if admin:
            ours = client.gateway_url in (None, info.get("gateway_url"))
            url = client.admin_url or (info.get("admin_url") if ours else None)
            key = _secret(cfg.admin_key) or info.get("admin_key")
            if not url or not key:
                raise SystemExit("no operator plane or admin key: set LORAPLEX_ADMIN_URL (the gateway's admin port, "
                                 "LORAPLEX_ADMIN_PORT) and LORAPLEX_ADMIN_KEY, or run `make up` to write "
                                 "var/stack.json")
            return cls(url, key)
        if tenant:
            key = info.get("tenants", {}).get(tenant, {}).get("api_key")
        else:
            key = _secret(client.api_key)
        if not url or not key:
            raise SystemExit("no gateway or key: set LORAPLEX_GATEWAY_URL and LORAPLEX_API_KEY "
                             "(or LORAPLEX_ADMIN_KEY), or run `make up` to write var/stack.json")
        return cls(url, key)

    def audit_events(self, limit: int = 50, **filters) -> list[dict]:
        """Up to `limit` audit events (admin key), newest first, following the API's pages.

        Args:
            filters: `tenant`, `action`, `since`, `until` of `GET /admin/audit` (None: no filter).
        """
        params = {k: v for k, v in filters.items() if v is not None}
        events: list[dict] = []
        while len(events) < limit:
            page = self.call("GET", "/admin/audit", params={**params, "limit": min(limit - len(events), 1000)})
            events += page["data"]
            if not page.get("next"):
                break
            params["before"] = page["next"]
        return events

    def push_model(self, directory: Path, name: str, kind: str, *, derived_from: dict | None = None,
                   metadata: dict | None = None, progress: Progress = None) -> dict:
        """Upload a full or merged model directory (`kind` full|merged) to the registry's models/."""
        from registry.model_registry import model_files

        data = {"kind": kind}
        if metadata:
            data["metadata"] = json.dumps(metadata)
        if derived_from:
            data["derived_from"] = json.dumps(derived_from)
        return self._upload(f"{MODELS_API}/{name}/versions", model_files(directory), data, progress)

    def pull_model(self, name: str, ref: str, out: Path, progress: Progress = None) -> dict:
        """Download a model version (`ref`: version or alias) into `out`, every file checked by SHA-256.

        Returns:
            The version's public manifest.
        """
        info = self.call("GET", f"{MODELS_API}/{name}")
        version = info["aliases"].get(ref, ref)
        manifest = next((v for v in info["versions"] if v["version"] == version), None)
        if manifest is None:
            raise SystemExit(f"{name}@{ref} not found: list versions with `loraplex model ls`")
        out.mkdir(parents=True, exist_ok=True)
        for filename, entry in manifest["files"].items():
            digest = hashlib.sha256()
            part = out / f".{filename}.part"
            with self.http.stream("GET", f"{MODELS_API}/{name}/versions/{version}/files/{filename}") as r:
                if r.status_code >= 400:
                    r.read()
                    raise ApiError(r.status_code, r.json())
                with open(part, "wb") as fh:
                    for chunk in r.iter_bytes():
                        digest.update(chunk)
                        fh.write(chunk)
                        if progress:
                            progress(len(chunk))
            if digest.hexdigest() != entry["sha256"]:
                part.unlink()
                raise SystemExit(f"{filename}: downloaded bytes do not match the manifest's SHA-256; try again")
            part.rename(out / filename)
        return manifest

    def set_quotas(self, tenant: str, **quotas: int | None) -> dict:
        """Change some of `tenant`'s quotas (admin key; 0 or None: unlimited, keys not given keep their value)
        through `PATCH /admin/tenants/{name}`; returns the tenant with its quotas as stored."""
        return self.call("PATCH", f"/admin/tenants/{tenant}", json={"quotas": quotas})
