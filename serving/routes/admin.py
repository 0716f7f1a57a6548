"""Tenant management with the admin key."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from serving.deps import AdminDep, GatewayDep

router = APIRouter(prefix="/admin", dependencies=[AdminDep])


class TenantCreate(BaseModel):
    name: str
    quotas: dict = Field(default_factory=dict)


@router.post("/tenants", status_code=201)
async def create_tenant(body: TenantCreate, gw: GatewayDep) -> dict:
    tenant, key = await asyncio.to_thread(gw.tenants.create, body.name, body.quotas)
    return {"name": tenant.name, "api_key": key, "quotas": tenant.quotas}


@router.get("/tenants")
async def list_tenants(gw: GatewayDep) -> dict:
    tenants = await asyncio.to_thread(gw.tenants.list)
    return {"data": [t.model_dump(mode="json") for t in tenants]}


@router.post("/tenants/{name}/keys")
async def rotate_key(name: str, gw: GatewayDep) -> dict:
    key = await asyncio.to_thread(gw.tenants.rotate_key, name)
    gw.forget_tenant(name)
    return {"name": name, "api_key": key}


@router.delete("/tenants/{name}", status_code=204)
async def delete_tenant(name: str, gw: GatewayDep) -> Response:
    await asyncio.to_thread(gw.tenants.delete, name)
    gw.forget_tenant(name)
    return Response(status_code=204)
