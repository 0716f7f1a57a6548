"""Tenant management with the admin key."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from common.errors import Conflict
from registry.audit import MAX_LIMIT, AuditAction, AuditQuery, parse_time
from serving.admission.quotas import QuotaChange
from serving.audit_trail import ADMIN, audit_log_of, audited
from serving.deps import AdminDep, GatewayDep

router = APIRouter(prefix="/admin", dependencies=[AdminDep])


class TenantCreate(BaseModel):
    name: str
    quotas: QuotaChange = Field(default_factory=QuotaChange)  # known keys, non-negative ints: checked here,
    # not when the tenant's first request reads them


@router.post("/tenants", status_code=201)
async def create_tenant(body: TenantCreate, gw: GatewayDep) -> dict:
    async with audited(gw, AuditAction.TENANT_CREATE, actor=ADMIN, tenant=body.name) as detail:
        quotas = body.quotas.model_dump(exclude_none=True)
        detail["quotas"] = quotas
        tenant, key = await asyncio.to_thread(gw.tenants.create, body.name, quotas)
    return {"name": tenant.name, "api_key": key, "quotas": tenant.quotas}


@router.get("/tenants")
async def list_tenants(gw: GatewayDep,
                       limit: int | None = Query(None, ge=1, le=1000, description="page size (default: all)"),
                       after: str | None = Query(None, description="cursor: the `next` of the previous page")) -> dict:
    """Tenants by name; with `limit`, one page and `next` (null on the last page)."""
    tenants = await asyncio.to_thread(gw.tenants.list, limit and limit + 1, after)
    more = limit is not None and len(tenants) > limit
    tenants = tenants[:limit] if limit else tenants
    return {"data": [t.model_dump(mode="json") for t in tenants], "has_more": more,
            "next": tenants[-1].name if more else None}


@router.post("/tenants/{name}/keys")
async def rotate_key(name: str, gw: GatewayDep) -> dict:
    async with audited(gw, AuditAction.TENANT_ROTATE_KEY, actor=ADMIN, tenant=name):  # the key: never
        key = await asyncio.to_thread(gw.tenants.rotate_key, name)
    gw.forget_tenant(name)
    return {"name": name, "api_key": key}


@router.delete("/tenants/{name}", status_code=204)
async def delete_tenant(name: str, gw: GatewayDep) -> Response:
    async with audited(gw, AuditAction.TENANT_DELETE, actor=ADMIN, tenant=name):
        await asyncio.to_thread(gw.tenants.delete, name)
    gw.forget_tenant(name)
    return Response(status_code=204)


class TenantUpdate(BaseModel):
    """`PATCH /admin/tenants/{name}`: the quotas to change (others keep their value; null removes a limit)."""

    model_config = ConfigDict(extra="forbid")
    quotas: QuotaChange


@router.patch("/tenants/{name}")
async def update_tenant(name: str, body: TenantUpdate, gw: GatewayDep) -> dict:
    """Change a tenant's quotas: at once on this gateway, on the others within 2 x LORAPLEX_AUTH_CACHE_S."""
    changes = body.quotas.model_dump(exclude_unset=True)
    async with audited(gw, AuditAction.TENANT_SET_QUOTAS, actor=ADMIN, tenant=name) as detail:
        detail["quotas"] = changes
        tenant = await asyncio.to_thread(gw.tenants.set_quotas, name, changes)
    gw.forget_keys(name)
    return tenant.model_dump(mode="json")


def _tiers(gw):
    if gw.tiers is None:
        raise Conflict("pins apply to the gateway's local engine tiers; this gateway routes through Ray, whose "
                       "replicas keep their own adapters")
    return gw.tiers


@router.get("/pins")
async def list_pins(gw: GatewayDep, tenant: str | None = None) -> dict:
    """Pinned adapters (never evicted from the engine nor the disk cache) with the version each holds now."""
    return {"data": await _tiers(gw).list_pins(tenant)}


@router.put("/pins/{tenant}/{name}/{ref}")
async def pin_adapter(tenant: str, name: str, ref: str, gw: GatewayDep) -> dict:
    """Pin `tenant`'s adapter `name` at `ref` (an alias such as prod, followed as it moves, or a version):
    loaded now, and kept by every gateway of the registry (re-read every LORAPLEX_PINS_REFRESH_S)."""
    return await _tiers(gw).pin(tenant, name, ref)


@router.delete("/pins/{tenant}/{name}/{ref}", status_code=204)
async def unpin_adapter(tenant: str, name: str, ref: str, gw: GatewayDep) -> Response:
    await _tiers(gw).unpin(tenant, name, ref)
    return Response(status_code=204)


@router.get("/audit")
async def audit(gw: GatewayDep, tenant: str | None = None, action: AuditAction | None = None,
                since: str | None = None, until: str | None = None,
                before: str | None = Query(None, description="cursor: the `next` of the previous page"),
                limit: int = Query(100, ge=1, le=MAX_LIMIT)) -> dict:
    """Audit events, newest first; `since` inclusive, `until` exclusive (ISO-8601, UTC unless an offset is
    given); `next` is the cursor of the following page (null on the last)."""
    q = AuditQuery(tenant=tenant, action=action, since=parse_time(since, "since"), until=parse_time(until, "until"),
                   before=before, limit=limit)
    events, cursor = await asyncio.to_thread(audit_log_of(gw).query, q)
    return {"data": [e.model_dump(mode="json") for e in events], "next": cursor}
