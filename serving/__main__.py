"""`python -m serving`: run the gateway with settings from the environment: the tenants' plane on
LORAPLEX_GATEWAY_HOST:PORT and the operators' plane on LORAPLEX_ADMIN_HOST:PORT, in one process and loop.

SIGTERM drains: new requests get 503 + Retry-After and /ready 503, admitted requests (streams too)
finish, up to LORAPLEX_DRAIN_TIMEOUT_S; then the tenants' server stops, then the operators' (it answers
/metrics and the admin API during the drain), a managed engine is stopped, exit 0.
A second SIGTERM, or Ctrl-C, exits at once (uvicorn's own handling).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import uvicorn
from fastapi import FastAPI

from serving import logs
from serving.app import create_app, drain
from serving.gateway import Gateway
from serving.listeners import bind, operator_server, serve_planes
from serving.operator_app import create_operator_app
from serving.server_config import server_config
from serving.settings import ServingSettings

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_timeout_s: float):
        super().__init__(config)
        self.app, self.drain_timeout_s = app, drain_timeout_s
        self._drain_requested = False
        self._drain_task: asyncio.Task | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self._drain_requested or not self.started:
            super().handle_exit(sig, frame)
            return
        # Not recorded as a captured signal: uvicorn would re-raise it after shutdown and the exit
        # code would say "killed" although the drain went as planned.
        self._drain_requested = True

    async def on_tick(self, counter: int) -> bool:
        if self._drain_requested and self._drain_task is None:  # signal handlers can't start tasks safely
            self._drain_task = asyncio.create_task(self._drain())
        return await super().on_tick(counter)

    async def _drain(self) -> None:
        try:
            await drain(self.app, self.drain_timeout_s)
        finally:
            self.should_exit = True


def main() -> None:
    settings = ServingSettings()
    if settings.admin_port and settings.admin_port == settings.gateway_port:
        raise SystemExit(f"LORAPLEX_ADMIN_PORT must differ from LORAPLEX_GATEWAY_PORT ({settings.gateway_port}): "
                         "the operators' plane has its own listener")
    logs.configure()
    # both sockets first: a taken port fails here, before an engine is started
    tenant_sock = bind(settings.gateway_host, settings.gateway_port, "tenant")
    operator_sock = bind(settings.admin_host, settings.admin_port, "operator")
    gateway = Gateway.from_settings(settings)
    app = create_app(gateway)
    config = server_config(app, timeout_graceful_shutdown=5)  # the drain already waited
    server = DrainingServer(config, app, settings.drain_timeout_s)
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(serve_planes(server, tenant_sock, operator_server(create_operator_app(gateway)), operator_sock))


if __name__ == "__main__":
    main()
