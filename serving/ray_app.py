"""loraplex on Ray Serve: the gateway as the ingress deployment, N engine replicas behind it.

    python -m serving.ray_app                 # a local Ray cluster in this process; blocks until SIGTERM
    loraplex serve ray --address auto         # deploy onto a running cluster and return

Configuration is the usual LORAPLEX_* environment (gateway, registry, engine) plus LORAPLEX_RAY_*
(serving/ray_settings.py). The LORAPLEX_*, AWS_* and VLLM_* variables of the deploying process travel to
every replica through Ray's runtime_env, so nodes need no configuration of their own beyond the
installed package and the base model directory.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import ray
from fastapi import FastAPI
from ray import serve

from serving.app import create_app
from serving.gateway import Gateway
from serving.listeners import bind, operator_server, start_operator
from serving.operator_app import create_operator_app
from serving.ray_engine import build_engine_deployment
from serving.ray_settings import FORWARDED_ENV_PREFIXES, RaySettings
from serving.settings import ServingSettings
from serving.transport.ray import RayTransport

log = logging.getLogger("loraplex.ray")


@serve.ingress()
class GatewayIngress:
    """Ray Serve's HTTP ingress: the single-machine tenants' app (auth, quotas, fair admission, resolution,
    adapters) with inference sent to the engine deployment; one gateway per replica, all sharing S3.

    Serve's proxy carries the tenants' plane only. Each replica serves the operators' plane (admin API, its own
    /metrics) itself on LORAPLEX_ADMIN_HOST:LORAPLEX_ADMIN_PORT of its node, on the replica's event loop; a
    second ingress replica on the same node finds the port taken and goes without one (logged)."""

    def __init__(self, engines, ray_settings: dict):
        settings = ServingSettings().model_copy(update={"engine_managed": False})
        self.gateway = Gateway.from_settings(settings, transport=RayTransport(engines, RaySettings(**ray_settings)))
        self.operator_task = None

    async def __serve_build_asgi_app__(self) -> FastAPI:
        # async: Serve awaits it on the replica's event loop, the loop the operator server must share
        s = self.gateway.settings
        try:
            sock = bind(s.admin_host, s.admin_port, "operator")
        except OSError as e:
            log.warning("this ingress replica serves no operator plane", extra={"fields": {"error": str(e)}})
        else:
            self.operator_task = await start_operator(operator_server(create_operator_app(self.gateway)), sock)
        return create_app(self.gateway)


def forwarded_env() -> dict[str, str]:
    """The configuration replicas need, from this process's environment."""
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    env.pop("LORAPLEX_ENGINE_URL", None)  # each replica picks its own engine port
    env.pop("LORAPLEX_ENGINE_MANAGED", None)
    return env


def build_app(ray_settings: RaySettings, serving: ServingSettings):
    """The Serve application: Gateway (ingress) -> LoraEngine (N replicas, multiplexed adapters)."""
    engines = build_engine_deployment(ray_settings, serving)
    ingress = serve.deployment(GatewayIngress, name="Gateway", num_replicas=ray_settings.ingress_replicas,
                               max_ongoing_requests=ray_settings.ingress_max_ongoing,
                               ray_actor_options={"num_cpus": 0})
    return ingress.bind(engines, ray_settings.model_dump(mode="json"))


def app_builder(args: dict | None = None):
    """Application builder for Serve config files and KubeRay's RayService (`import_path:
    serving.ray_app:app_builder`): settings come from the environment (the config's runtime_env), `args`
    override LORAPLEX_RAY_* fields by name, e.g. `{"engine_replicas": 4}`."""
    return build_app(RaySettings(**(args or {})), ServingSettings())


def connect(ray_settings: RaySettings) -> None:
    """Join the configured cluster, or start a local one (no dashboard) when no address is set."""
    if ray.is_initialized():
        return
    env = {"env_vars": forwarded_env()}
    if ray_settings.address:
        ray.init(address=ray_settings.address, runtime_env=env, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=ray_settings.num_cpus, include_dashboard=False, runtime_env=env,
                 logging_level=logging.WARNING)


def deploy(ray_settings: RaySettings | None = None, serving: ServingSettings | None = None) -> str:
    """Deploy (or update) the application; returns when every replica is up. Returns the gateway URL."""
    ray_settings = ray_settings or RaySettings()
    serving = serving or ServingSettings()
    connect(ray_settings)
    serve.start(http_options={"host": ray_settings.http_host, "port": serving.gateway_port})
    serve.run(build_app(ray_settings, serving), name=ray_settings.app_name, route_prefix="/")
    return f"http://{ray_settings.http_host}:{serving.gateway_port}"


def admin_url(serving: ServingSettings | None = None) -> str:
    """The operators' plane of the ingress replica on this node (serving/listeners.py)."""
    serving = serving or ServingSettings()
    return f"http://{serving.admin_host}:{serving.admin_port}"


def engine_handle(ray_settings: RaySettings | None = None):
    ray_settings = ray_settings or RaySettings()
    return serve.get_deployment_handle("LoraEngine", app_name=ray_settings.app_name)


def replica_infos(ray_settings: RaySettings | None = None, tries: int = 40) -> dict[str, dict]:
    """`info()` of each engine replica reached within `tries` calls (the router picks replicas at random)."""
    handle, seen = engine_handle(ray_settings), {}
    want = (ray_settings or RaySettings()).engine_replicas
    for _ in range(tries):
        info = handle.info.remote().result(timeout_s=30)
        seen[info["replica"]] = info
        if len(seen) >= want:
            break
    return seen


def run_local(info_file: Path | None = None, ray_settings: RaySettings | None = None) -> None:
    """Start a local cluster, deploy, then wait for SIGTERM/SIGINT and shut everything down."""
    from serving import logs

    logs.configure()
    ray_settings = ray_settings or RaySettings()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    url = deploy(ray_settings)
    infos = replica_infos(ray_settings)
    if info_file is not None:
        info_file.parent.mkdir(parents=True, exist_ok=True)
        info_file.write_text(json.dumps({"gateway_url": url, "admin_url": admin_url(), "replicas": infos},
                                        indent=2))
    log.info("loraplex on Ray Serve is up", extra={"fields": {"url": url, "replicas": len(infos)}})
    while not stop.is_set():
        time.sleep(0.5)
    log.info("shutting down Ray Serve (replicas stop their engines)")
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    info = os.environ.get("LORAPLEX_RAY_INFO_FILE")
    run_local(Path(info) if info else None)
