"""Run a gateway's two planes inside the current process (tests and benchmarks that stand up their own stack)."""

from __future__ import annotations

import asyncio
import threading
import time

import uvicorn
from fastapi import FastAPI

from serving.listeners import bind, operator_server, serve_planes
from serving.server_config import server_config


def serve_in_thread(app: FastAPI, port: int, host: str = "127.0.0.1", timeout: float = 30, *,
                    operator: FastAPI, admin_port: int, admin_host: str = "127.0.0.1") -> uvicorn.Server:
    """Serve the tenants' `app` on host:port and the `operator` app on admin_host:admin_port, on one event loop
    in a daemon thread; return the tenants' server once both accept connections.

    Stop both with `server.should_exit = True`.
    """
    tenant_sock, operator_sock = bind(host, port, "tenant"), bind(admin_host, admin_port, "operator")
    server = uvicorn.Server(server_config(app))
    ops = operator_server(operator)

    def run() -> None:
        with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:  # uvloop where installed
            runner.run(serve_planes(server, tenant_sock, ops, operator_sock))

    threading.Thread(target=run, daemon=True, name=f"gateway-{port}").start()
    deadline = time.monotonic() + timeout
    while not (server.started and ops.started):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gateway on ports {port}/{admin_port} did not start within {timeout}s")
        time.sleep(0.05)
    return server
