"""A client of the gateway's public HTTP API: the CLI, the stack harness, the benchmarks and the tests use it.

It knows only the API (paths, the OpenAI error shape, the adapter upload); where a gateway and its keys
are found (var/stack.json, LORAPLEX_* variables) is the CLI's business (loraplex/client.py).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import httpx

from common.peft_format import ADAPTER_FILES

ADAPTERS_API, MODELS_API = "/v1/adapters", "/v1/artifacts/models"
Progress = Callable[[int], None] | None  # called with the bytes just sent


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
    """An HTTP error answer of the gateway; `status` and the OpenAI error body's `code`."""

    def __init__(self, status: int, body: dict | str):
        err = body.get("error", {}) if isinstance(body, dict) else {}
        self.status, self.code = status, err.get("code")
        super().__init__(f"HTTP {status}: {err.get('message', body)}")


class ApiClient:
    """One key's calls to one gateway (a tenant's key, or the admin key for /admin/*).

    Example:
        admin = ApiClient("http://127.0.0.1:8000", admin_key)
        key = admin.create_tenant("acme")
        ApiClient(url, key).push(Path("adapters/reverse"), "reverse")
    """

    def __init__(self, url: str, key: str, timeout: float = 120.0):
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, method: str, path: str, **kw) -> dict | None:
        """The JSON answer of one request; ApiError for a status >= 400."""
        r = self.http.request(method, path, **kw)
        if r.status_code >= 400:
            try:
                raise ApiError(r.status_code, r.json())
            except ValueError:
                raise ApiError(r.status_code, r.text) from None
        return r.json() if r.content else None

    def create_tenant(self, name: str, quotas: dict | None = None) -> str:
        """Create tenant `name` (admin key); returns its API key."""
        return self.call("POST", "/admin/tenants", json={"name": name, "quotas": quotas or {}})["api_key"]

    def push(self, directory: Path, name: str, metadata: dict | None = None, progress: Progress = None,
             warm: bool = False) -> dict:
        """Upload the two PEFT files of `directory` (plus optional training metadata) as a new version.

        Args:
            progress: called with each chunk's size in bytes as the upload streams (e.g. a progress bar).
            warm: have the gateway load the new version into the engine at once (its first request finds it).
        """
        missing = [f for f in ADAPTER_FILES if not (directory / f).is_file()]
        if missing:
            raise SystemExit(f"{directory} lacks {', '.join(missing)}: point at a PEFT adapter directory")
        data = {"metadata": json.dumps(metadata)} if metadata else None
        path = f"{ADAPTERS_API}/{name}/versions" + ("?warm=true" if warm else "")
        return self._upload(path, [directory / f for f in ADAPTER_FILES], data, progress)

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
        body = {"version": version, "expected_version": expected}
        return self.call("PUT", f"{api}/{name}/aliases/{alias}", json=body)

    def move_alias(self, name: str, alias: str, version: str, *, api: str = ADAPTERS_API) -> dict:
        """Point NAME@ALIAS at `version` from wherever it points now (read it, then compare-and-swap)."""
        current = self.call("GET", f"{api}/{name}")["aliases"].get(alias)
        return self.promote(name, alias, version, current, api=api)

    def complete(self, model: str, prompt: str, max_tokens: int = 16) -> str:
        """The text of one greedy completion."""
        out = self.call("POST", "/v1/completions", json={"model": model, "prompt": prompt,
                                                          "max_tokens": max_tokens, "temperature": 0})
        return out["choices"][0]["text"]
