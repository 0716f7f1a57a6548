"""OpenAI-compatible inference routes, scoped to the caller's tenant."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from serving.deps import GatewayDep, TenantDep
from serving.forwarding import forward
from serving.openai_requests import model_limits, parse_body
from serving.protocol import model_card
from serving.request_body import read_limited

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


async def _checked_body(request: Request, gw, path: str) -> dict:
    """The request's body if it is a valid OpenAI request (413 over the size limit, else 400 naming the
    field): what reaches the engine, as the client sent it."""
    settings = gw.settings
    raw = await read_limited(request, settings.max_request_bytes)
    return parse_body(raw, path, model_limits(settings.base_model, settings.max_model_len))


@router.post("/v1/completions")
async def completions(request: Request, tenant: TenantDep, gw: GatewayDep):
    body = await _checked_body(request, gw, "/v1/completions")
    return await forward(gw, tenant, body, "/v1/completions", request.receive)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, tenant: TenantDep, gw: GatewayDep):
    body = await _checked_body(request, gw, "/v1/chat/completions")
    return await forward(gw, tenant, body, "/v1/chat/completions", request.receive)
