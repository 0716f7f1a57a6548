"""Request dependencies: the gateway state, the caller's tenant, the admin check, who may read /metrics."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from common.errors import AuthenticationFailed
from registry.tenants import Tenant
from serving.gateway import Gateway


async def get_gateway(request: Request) -> Gateway:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a hop per request (~0.2 ms of CPU)
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def bearer_key(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <your key>'")
    return key.strip()


async def current_tenant(request: Request, gw: GatewayDep) -> Tenant:
    tenant = await gw.authenticate(bearer_key(request))
    request.state.tenant = tenant.name
    return tenant


async def require_admin(request: Request, gw: GatewayDep) -> None:
    key = bearer_key(request)
    admin = gw.settings.admin_key
    if admin is None or not hmac.compare_digest(key.encode(), admin.get_secret_value().encode()):
        raise AuthenticationFailed("invalid admin key: admin routes need LORAPLEX_ADMIN_KEY as the bearer key")


LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


async def require_metrics_reader(request: Request, gw: GatewayDep) -> None:
    """/metrics names every tenant and adapter with traffic: the admin key, or (LORAPLEX_METRICS_AUTH=loopback)
    a caller on this host. The peer address is the socket's: behind a proxy on this host, use `key`."""
    if gw.settings.metrics_auth == "loopback" and request.client is not None and request.client.host in LOOPBACK:
        return
    await require_admin(request, gw)


TenantDep = Annotated[Tenant, Depends(current_tenant)]
AdminDep = Depends(require_admin)
