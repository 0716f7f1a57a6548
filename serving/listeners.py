"""The two listeners of one gateway process, on one event loop: the tenants' plane (serving/app.py) and the
operators' plane (serving/operator_app.py), which share one Gateway. One loop, because the gateway's
clients (engine connections, locks) belong to the loop they were first used on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn
from fastapi import FastAPI

from serving.server_config import server_config

log = logging.getLogger(__name__)


def bind(host: str, port: int, plane: str) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), bound before anything starts, so that a taken
    port fails start-up at once and says which setting to change."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    try:
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise OSError(e.errno, f"cannot listen on {host}:{port} for the {plane} plane ({e.strerror}): stop what "
                               f"uses it or set LORAPLEX_{'GATEWAY' if plane == 'tenant' else 'ADMIN'}_PORT") from e


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class OperatorServer(uvicorn.Server):
    """The operators' server: it leaves signals to the tenants' server (SIGTERM drains there first) and stops
    when that one has stopped, so /metrics and the admin API stay up during a drain."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def operator_server(app: FastAPI) -> OperatorServer:
    return OperatorServer(server_config(app, lifespan="off"))


async def start_operator(server: OperatorServer, sock: socket.socket) -> asyncio.Task:
    """Serve the operator plane on `sock` in a task of this loop; returns once it accepts connections."""
    task = asyncio.create_task(server.serve(sockets=[sock]), name="operator-plane")
    while not server.started:
        if task.done():
            task.result()  # its start-up error
            raise RuntimeError("the operator plane stopped while starting")
        await asyncio.sleep(0.02)
    log.info("operator plane listening", extra={"fields": {"url": url_of(sock)}})
    return task


async def serve_planes(tenant: uvicorn.Server, tenant_sock: socket.socket, operator: OperatorServer,
                       operator_sock: socket.socket) -> None:
    """Start the operator plane, serve the tenants' plane until it stops (a drain, a signal), then stop the
    operator plane."""
    task = await start_operator(operator, operator_sock)
    try:
        await tenant.serve(sockets=[tenant_sock])
    finally:
        operator.should_exit = True
        await task
