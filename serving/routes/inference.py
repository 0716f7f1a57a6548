"""OpenAI-compatible inference routes, scoped to the caller's tenant."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from serving.deps import GatewayDep, TenantDep
from serving.forwarding import forward
from serving.openai_requests import BODIES, model_limits, parse_body
from serving.protocol import model_card
from serving.request_body import read_limited

router = APIRouter()


def _inline_defs(node, defs: dict):
    """`node` with each `{"$ref": "#/$defs/X"}` replaced by X (the models nest without cycles)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline_defs(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline_defs(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_defs(v, defs) for v in node]
    return node


def documented_body(path: str) -> dict:
    """The `openapi_extra` of an inference route: its request body as the JSON schema of its pydantic model.
    Documentation only: the route reads the raw body itself (a size limit while reading, then parse_body),
    so FastAPI does not parse it; the schema is inlined since /openapi.json has no place for `$defs`."""
    schema = BODIES[path].model_json_schema()
    body = _inline_defs({k: v for k, v in schema.items() if k != "$defs"}, schema.get("$defs", {}))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}}


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


PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})  # also served by serving/inference_lane.py


async def serve(request: Request, gw, tenant, path: str):
    """One inference request of an authenticated tenant: its checked body, forwarded (the routes below and
    serving/inference_lane.py)."""
    body = await _checked_body(request, gw, path)
    return await forward(gw, tenant, body, path, request.receive)


@router.post("/v1/completions", openapi_extra=documented_body("/v1/completions"))
async def completions(request: Request, tenant: TenantDep, gw: GatewayDep):
    return await serve(request, gw, tenant, "/v1/completions")


@router.post("/v1/chat/completions", openapi_extra=documented_body("/v1/chat/completions"))
async def chat_completions(request: Request, tenant: TenantDep, gw: GatewayDep):
    return await serve(request, gw, tenant, "/v1/chat/completions")
