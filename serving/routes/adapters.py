"""A tenant's adapters: upload versions, list, move aliases (compare-and-swap), delete versions."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from common.errors import (
    InvalidAdapter,
    InvalidName,
    InvalidRequest,
    RequestTooLarge,
    TenantLimitExceeded,
    TenantStorageFull,
)
from common.names import check_name
from common.peft_format import ADAPTER_FILES
from registry.audit import AuditAction
from serving import metrics
from serving.alias_moves import move_alias
from serving.audit_trail import audited
from serving.deps import GatewayDep, TenantDep
from serving.upload_form import read_form

router = APIRouter(prefix="/v1/adapters")


def public_version(m) -> dict:
    return {"name": m.name, "version": m.version, "sha256": m.sha256, "size_bytes": m.size_bytes,
            "rank": m.rank, "alpha": m.alpha, "target_modules": m.target_modules,
            "created_at": m.created_at, "files": {k: v.model_dump() for k, v in m.files.items()},
            "metadata": m.metadata, "health": m.health,
            "base_model": m.base_model.model_dump() if m.base_model else None, "base_check": m.base_check}


def public_adapter(info) -> dict:
    return {"name": info.name, "aliases": info.aliases, "versions": [public_version(v) for v in info.versions]}


ADAPTER_LIMIT = ("LORAPLEX_MAX_UPLOAD_BYTES", "shrink the adapter (a lower rank, fewer target modules)")


async def read_upload(request: Request, limit: int) -> tuple[dict[str, bytes], dict | None]:
    """The two PEFT files of a multipart upload by file name, and the optional `metadata` JSON field.

    Over `limit` bytes of files → RequestTooLarge (413), counted as the bytes arrive. Any other file is
    refused (the validation gate names it); other fields are refused here.
    """
    form = await read_form(request, limit, *ADAPTER_LIMIT, expected=" and ".join(ADAPTER_FILES), max_files=8,
                           max_fields=8)
    try:
        files: dict[str, bytes] = {}
        metadata = None
        for field, value in form.multi_items():
            if not isinstance(value, UploadFile):
                if field != "metadata":
                    raise InvalidRequest(f"unexpected form field {field!r}: send only the two files and an optional "
                                         "'metadata' field (a JSON object)", param=field)
                metadata = json_field("metadata", value)
                continue
            fname = value.filename or ""
            if fname in files:
                raise InvalidAdapter("files", f"{fname} was sent twice: send each file once")
            files[fname] = await value.read()
    finally:
        await form.close()
    return files, metadata


def json_field(name: str, raw: str) -> dict:
    """A JSON-object form field (`metadata`, `derived_from`); InvalidAdapter("metadata") otherwise."""
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise InvalidAdapter("metadata", f"the '{name}' field is not valid JSON ({e}): send a JSON object") from e
    if not isinstance(value, dict):
        raise InvalidAdapter("metadata", f"the '{name}' field must be a JSON object")
    return value


@router.post("/{name}/versions", status_code=201)
async def upload_version(name: str, request: Request, tenant: TenantDep, gw: GatewayDep,
                         warm: bool = Query(False, description="load the version into the engine now")) -> dict:
    async with audited(gw, AuditAction.ADAPTER_UPLOAD, actor=tenant.name, tenant=tenant.name, target=name) as detail:
        check_name(name, "adapter name")
        if name == gw.settings.base_name:
            raise InvalidName(f"'{name}' is reserved for the base model: choose another adapter name", param="name")
        try:
            files, metadata = await read_upload(request, gw.settings.max_upload_bytes)
            manifest = await asyncio.to_thread(gw.adapters.publish, tenant.name, name, files, uploader=tenant.name,
                                               metadata=metadata)
        except (InvalidAdapter, RequestTooLarge, TenantLimitExceeded, TenantStorageFull):
            metrics.UPLOADS.labels("refused").inc()
            raise
        detail.update(version=manifest.version, sha256=manifest.sha256, size_bytes=manifest.size_bytes,
                      rank=manifest.rank)
    metrics.UPLOADS.labels("ok").inc()
    gw.forget_models(tenant.name, name)  # the newest version may be what `name` means now
    if warm and gw.tiers is not None:
        gw.tiers.warm_soon(manifest)
    return public_version(manifest)


@router.get("")
async def list_adapters(tenant: TenantDep, gw: GatewayDep,
                        limit: int | None = Query(None, ge=1, le=1000, description="page size (default: all)"),
                        after: str | None = Query(None, description="cursor: the `next` of the previous page")) -> dict:
    """The tenant's adapters by name; with `limit`, one page and `next` (null on the last page)."""
    infos = await asyncio.to_thread(gw.adapters.list_adapters, tenant.name, limit and limit + 1, after)
    more = limit is not None and len(infos) > limit
    infos = infos[:limit] if limit else infos
    return {"data": [public_adapter(i) for i in infos], "has_more": more, "next": infos[-1].name if more else None}


@router.get("/{name}")
async def get_adapter(name: str, tenant: TenantDep, gw: GatewayDep) -> dict:
    return public_adapter(await asyncio.to_thread(gw.adapters.get_adapter, tenant.name, name))


class AliasMove(BaseModel):
    version: str
    expected_version: str | None = None
    warm: bool = False  # load the version into the engine before the alias's traffic arrives


@router.put("/{name}/aliases/{alias}")
async def set_alias(name: str, alias: str, body: AliasMove, tenant: TenantDep, gw: GatewayDep) -> dict:
    return await move_alias(gw, actor=tenant.name, tenant=tenant.name, name=name, alias=alias, version=body.version,
                            expected=body.expected_version, warm=body.warm)


@router.delete("/{name}/versions/{version}", status_code=204)
async def delete_version(name: str, version: str, tenant: TenantDep, gw: GatewayDep) -> Response:
    async with audited(gw, AuditAction.ADAPTER_DELETE, actor=tenant.name, tenant=tenant.name,
                       target=f"{name}@{version}"):
        await asyncio.to_thread(gw.adapters.delete_version, tenant.name, name, version)
    gw.forget_models(tenant.name, name)  # never replayed, not even during an S3 outage
    return Response(status_code=204)
