"""The CLI's HTTP client: everything goes through the gateway's public API (no back doors)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional

import httpx

from loraplex.settings import StackSettings

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ADAPTERS_API, MODELS_API = "/v1/adapters", "/v1/artifacts/models"
Progress = Optional[Callable[[int], None]]  # called with the bytes just sent


class ProgressFile:
    """A binary file that reports every chunk httpx reads from it, so uploads stream with a progress bar.

    httpx's multipart encoder rewinds it (`seek(0)`), sizes it (`fileno`) and reads it in 64 KiB chunks:
    the file is never held in memory whole.
    """

    def __init__(self, path: Path, on_read: Progress):
        self._fh = open(path, "rb")
        self._on_read = on_read

    def read(self, size: int = -1) -> bytes:
        chunk = self._fh.read(size)
        if chunk and self._on_read:
            self._on_read(len(chunk))
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def fileno(self) -> int:
        return self._fh.fileno()

    def close(self) -> None:
        self._fh.close()


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

    def push(self, directory: Path, name: str, metadata: dict | None = None, progress: Progress = None) -> dict:
        """Upload the two PEFT files of `directory` (plus optional training metadata) as a new version.

        Args:
            progress: called with each chunk's size in bytes as the upload streams (e.g. a progress bar).
        """
        missing = [f for f in ADAPTER_FILES if not (directory / f).is_file()]
        if missing:
            raise SystemExit(f"{directory} lacks {', '.join(missing)}: point at a PEFT adapter directory")
        data = {"metadata": json.dumps(metadata)} if metadata else None
        return self._upload(f"/v1/adapters/{name}/versions", [directory / f for f in ADAPTER_FILES], data, progress)

    def push_model(self, directory: Path, name: str, kind: str, *, derived_from: dict | None = None,
                   metadata: dict | None = None, progress: Progress = None) -> dict:
        """Upload a full or merged model directory (`kind` full|merged) to the registry's models/."""
        from registry.models import model_files

        data = {"kind": kind}
        if metadata:
            data["metadata"] = json.dumps(metadata)
        if derived_from:
            data["derived_from"] = json.dumps(derived_from)
        return self._upload(f"/v1/artifacts/models/{name}/versions", model_files(directory), data, progress)

    def pull_model(self, name: str, ref: str, out: Path, progress: Progress = None) -> dict:
        """Download a model version (`ref`: version or alias) into `out`, every file checked by SHA-256.

        Returns:
            The version's public manifest.
        """
        info = self.call("GET", f"/v1/artifacts/models/{name}")
        version = info["aliases"].get(ref, ref)
        manifest = next((v for v in info["versions"] if v["version"] == version), None)
        if manifest is None:
            raise SystemExit(f"{name}@{ref} not found: list versions with `loraplex model ls`")
        out.mkdir(parents=True, exist_ok=True)
        for filename, entry in manifest["files"].items():
            digest = hashlib.sha256()
            part = out / f".{filename}.part"
            with self.http.stream("GET", f"/v1/artifacts/models/{name}/versions/{version}/files/{filename}") as r:
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

    def _upload(self, path: str, files: list[Path], data: dict | None, progress: Progress) -> dict:
        with contextlib.ExitStack() as stack:
            parts = []
            for file in files:
                handle = ProgressFile(file, progress)
                stack.callback(handle.close)
                parts.append(("files", (file.name, handle, "application/octet-stream")))
            return self.call("POST", path, files=parts, data=data)

    def promote(self, name: str, alias: str, version: str, expected: str | None, *, api: str = ADAPTERS_API) -> dict:
        """Point NAME@ALIAS at `version` if it points at `expected` now (None: it must not exist); 409 if it moved.

        Args:
            api: `ADAPTERS_API`, or `MODELS_API` for a full/merged model.
        """
        return self.call("PUT", f"{api}/{name}/aliases/{alias}", json={"version": version, "expected_version": expected})

    def move_alias(self, name: str, alias: str, version: str, *, api: str = ADAPTERS_API) -> dict:
        """Point NAME@ALIAS at `version` from wherever it points now (read it, then compare-and-swap)."""
        current = self.call("GET", f"{api}/{name}")["aliases"].get(alias)
        return self.promote(name, alias, version, current, api=api)

    def complete(self, model: str, prompt: str, max_tokens: int = 16) -> str:
        out = self.call("POST", "/v1/completions", json={"model": model, "prompt": prompt,
                                                          "max_tokens": max_tokens, "temperature": 0})
        return out["choices"][0]["text"]
