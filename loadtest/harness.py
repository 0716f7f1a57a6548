"""The stack harness: S3 (SeaweedFS) with its buckets, the gateway in this process on a fresh bucket, and
tenants with their adapters through the public API.

The one way the tests, the benchmarks and the stack launcher assemble a stack. Heavy imports (the
gateway, uvicorn) happen in the functions that need them, so the launcher pulls in only what S3 needs.

Example:
    with running_s3(tmp / "s3") as s3:
        gw = start_gateway(ServingSettings(engine_url=url), s3.endpoint, base_dir, tmp / "cache")
        gw.add_tenants(DEMO_TENANTS, demo.adapter_dirs)
        ...
        gw.close()

`gw.url` is the tenants' plane, `gw.admin_url` the operators' (admin API, /metrics).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from common.api_client import ApiClient
from common.procs import free_port
from registry.seaweed import SeaweedServer
from registry.settings import RegistrySettings
from registry.store import ObjectStore

AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def ensure_bucket(s3_endpoint: str, bucket: str) -> None:
    """Create `bucket` if it is missing (credentials from the AWS_* environment)."""
    ObjectStore(RegistrySettings(s3_endpoint=s3_endpoint, s3_bucket=bucket)).ensure_bucket()


def start_s3(data_dir: str | Path, *, access_key: str, secret_key: str, log_path: str | Path | None = None,
             buckets: tuple[str, ...] = (), on_started: Callable[[SeaweedServer], None] | None = None,
             timeout: float = 60.0, **ports: int) -> SeaweedServer:
    """Start SeaweedFS (detached: it outlives this process unless stopped), wait until S3 answers, create
    `buckets`. Stopped again if it does not come up.

    Args:
        data_dir, access_key, secret_key, log_path, ports: as `SeaweedServer.start` (`s3_port=` etc.).
        on_started: called with the server as soon as its process exists (e.g. to record its pid).
    """
    server = SeaweedServer().start(data_dir, access_key=access_key, secret_key=secret_key, log_path=log_path,
                                   **ports)
    try:
        if on_started is not None:
            on_started(server)
        server.wait_ready(timeout)
        for bucket in buckets:
            ensure_bucket(server.endpoint, bucket)
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def running_s3(data_dir: str | Path, *, log_path: str | Path | None = None, key_prefix: str = "lpx",
               timeout: float = 60.0) -> Iterator[SeaweedServer]:
    """SeaweedFS for the length of the block, with fresh credentials exported as AWS_* (this process's
    gateways and the children started meanwhile use them); at exit it stops and the environment is restored."""
    saved = {name: os.environ.get(name) for name in AWS_ENV}
    access_key, secret_key = key_prefix + secrets.token_hex(6), secrets.token_urlsafe(24)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(name, None)
    os.environ.update(AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    try:
        server = start_s3(data_dir, access_key=access_key, secret_key=secret_key, log_path=log_path, timeout=timeout)
        try:
            yield server
        finally:
            server.stop()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class RunningGateway:
    """A gateway reachable at `url` (tenants' plane) and `admin_url` (operators' plane: admin API, /metrics)
    with its admin key; `gateway` and `server` when it runs in this process.

    `tenants`: what `add_tenants` registered, tenant -> {"key", "adapter", "task", "version"}.
    """

    url: str
    admin_key: str
    gateway: Any = None  # serving.gateway.Gateway
    server: Any = None  # the uvicorn server of serving.embedded.serve_in_thread
    tenants: dict = field(default_factory=dict)
    admin_url: str | None = None

    def client(self, key: str, **kw) -> httpx.Client:
        """A raw HTTP client with `key` on the tenants' plane (for callers that check status codes themselves)."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=120, **kw)

    def admin(self, key: str | None = None, **kw) -> httpx.Client:
        """A raw HTTP client on the operators' plane with `key` (default: the admin key)."""
        return httpx.Client(base_url=self.admin_url, headers={"Authorization": f"Bearer {key or self.admin_key}"},
                            timeout=120, **kw)

    def api(self, key: str | None = None) -> ApiClient:
        """The API client with `key` on the tenants' plane; without a key, the admin key on the operators'."""
        return ApiClient(self.url, key) if key else ApiClient(self.admin_url, self.admin_key)

    def metrics_text(self) -> str:
        """The gateway's /metrics (operators' plane, admin key)."""
        with self.admin() as c:
            r = c.get("/metrics", timeout=30)
        r.raise_for_status()
        return r.text

    def add_tenant(self, name: str, quotas: dict | None = None) -> str:
        """Create tenant `name`; returns its API key."""
        with self.api() as admin:
            return admin.create_tenant(name, quotas)

    def publish(self, key: str, name: str, directory: Path, warm: bool = False) -> dict:
        """Upload the adapter in `directory` as a version of `name` in the key's tenant (`warm`: and have it
        loaded into the engine at once)."""
        with self.api(key) as client:
            return client.push(directory, name, warm=warm)

    def add_tenants(self, specs: list[dict], adapter_dirs: dict[str, Path]) -> dict:
        """Create each tenant of `specs` ({"tenant", "adapter", "task"}, e.g. training.demo.DEMO_TENANTS) and
        publish its adapter from `adapter_dirs`; returns (and keeps in `tenants`) tenant -> its entry."""
        for spec in specs:
            key = self.add_tenant(spec["tenant"])
            version = self.publish(key, spec["adapter"], adapter_dirs[spec["adapter"]])["version"]
            self.tenants[spec["tenant"]] = {"key": key, "adapter": spec["adapter"], "task": spec.get("task"),
                                            "version": version}
        return self.tenants

    def close(self) -> None:
        """Stop the in-process server (its thread ends once open requests are done)."""
        if self.server is not None:
            self.server.should_exit = True


def start_gateway(engine, s3_endpoint: str, base_dir: Path, cache_dir: Path, *,
                  bucket_prefix: str = "gw") -> RunningGateway:
    """The product's gateway over real HTTP (uvicorn in a thread of this process) on a fresh bucket.

    Args:
        engine: the gateway's ServingSettings (engine URL and any tuning); the registry's S3 endpoint,
            bucket, cache and base model, the admin key and the port are set here.
        s3_endpoint: S3 with AWS_* credentials in the environment.
        base_dir: the served base model (the registry validates uploads against it).
        cache_dir: the gateway's adapter cache.
        bucket_prefix: the fresh bucket is `<prefix>-<random>`.
    """
    from pydantic import SecretStr

    from serving.app import create_app
    from serving.embedded import serve_in_thread
    from serving.gateway import Gateway
    from serving.operator_app import create_operator_app

    admin_key, port, admin_port = "admin-" + secrets.token_hex(8), free_port(), free_port()
    settings = engine.model_copy(update={
        "s3_endpoint": s3_endpoint, "s3_bucket": f"{bucket_prefix}-{secrets.token_hex(4)}", "cache_dir": cache_dir,
        "base_model": base_dir, "admin_key": SecretStr(admin_key), "gateway_port": port, "admin_port": admin_port})
    ObjectStore(settings).ensure_bucket()
    gateway = Gateway.from_settings(settings)
    server = serve_in_thread(create_app(gateway), port, operator=create_operator_app(gateway), admin_port=admin_port)
    return RunningGateway(f"http://127.0.0.1:{port}", admin_key, gateway, server,
                          admin_url=f"http://127.0.0.1:{admin_port}")
