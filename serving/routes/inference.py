"""OpenAI-compatible inference routes, scoped to the caller's tenant."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from serving.deps import GatewayDep, TenantDep
from serving.forwarding import forward
from serving.protocol import CHAT_FIELDS, COMPLETION_FIELDS, check_body, model_card, read_json

router = APIRouter()


@router.get("/v1/models")
async def list_models(tenant: TenantDep, gw: GatewayDep) -> dict:
    infos = await asyncio.to_thread(gw.adapters.list_adapters, tenant.name)
    cards = [model_card(gw.settings.base_name, "loraplex")]
    dedicated = gw.settings.dedicated_engines.get(tenant.name)
    if dedicated:
        cards.append(model_card(dedicated["model"], tenant.name))
    for info in infos:
        cards.append(model_card(info.name, tenant.name))
        cards += [model_card(f"{info.name}@{alias}", tenant.name) for alias in sorted(info.aliases)]
    return {"object": "list", "data": cards}


@router.post("/v1/completions")
async def completions(request: Request, tenant: TenantDep, gw: GatewayDep):
    body = check_body(read_json(await request.body()), COMPLETION_FIELDS, "prompt")
    return await forward(gw, tenant, body, "/v1/completions")


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, tenant: TenantDep, gw: GatewayDep):
    body = check_body(read_json(await request.body()), CHAT_FIELDS, "messages")
    return await forward(gw, tenant, body, "/v1/chat/completions")
