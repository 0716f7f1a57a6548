"""A tenant's full fine-tunes and merged models: registry artifacts under `/v1/artifacts/models`.

Not `/v1/models`: that is OpenAI's list of what can be called (adapters and `base`). These endpoints only
store and hand out model directories (e.g. for a dedicated engine in separate-model mode); nothing here
loads a model into the shared engine.
"""

from __future__ import annotations

import asyncio
import hashlib

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from common.errors import IntegrityError, InvalidAdapter, InvalidRequest
from common.names import check_name
from registry.audit import AuditAction
from registry.model_registry import MAX_FILES, ModelRegistry
from serving.audit_trail import audited
from serving.deps import GatewayDep, TenantDep
from serving.routes.adapters import json_field
from serving.upload_form import read_form

router = APIRouter(prefix="/v1/artifacts/models")

FIELDS = ("kind", "metadata", "derived_from")


def registry_of(gw) -> ModelRegistry:
    """The gateway's model registry: same bucket and settings as its adapters (cheap to build, no I/O)."""
    return ModelRegistry(gw.store, gw.adapters.settings, gw.adapters.base_spec)


def public_model_version(m) -> dict:
    return {"name": m.name, "version": m.version, "sha256": m.sha256, "kind": m.kind, "size_bytes": m.size_bytes,
            "parameter_count": m.parameter_count, "dtypes": m.dtypes, "shape": m.shape.model_dump(),
            "derived_from": m.derived_from, "created_at": m.created_at,
            "files": {k: v.model_dump() for k, v in m.files.items()}, "metadata": m.metadata}


def public_model(info) -> dict:
    return {"name": info.name, "aliases": info.aliases, "versions": [public_model_version(v) for v in info.versions]}


@router.post("/{name}/versions", status_code=201)
async def upload_model_version(name: str, request: Request, tenant: TenantDep, gw: GatewayDep) -> dict:
    """Multipart: one file part per file of the model directory (by file name), a `kind` field (`full` or
    `merged`), optional `metadata` and `derived_from` JSON fields. 201 with the version; 422 names the rule."""
    async with audited(gw, AuditAction.MODEL_UPLOAD, actor=tenant.name, tenant=tenant.name, target=name) as detail:
        manifest = await _publish_upload(name, request, tenant, gw)
        detail.update(version=manifest.version, sha256=manifest.sha256, size_bytes=manifest.size_bytes,
                      kind=manifest.kind)
    return public_model_version(manifest)


async def _publish_upload(name: str, request: Request, tenant, gw):
    """The upload's form read, checked and published; its manifest."""
    check_name(name, "model name")
    models = registry_of(gw)
    # File parts are spooled to disk by Starlette; publish reads them one at a time.
    form = await read_form(request, models.settings.max_model_upload_bytes, "LORAPLEX_MAX_MODEL_UPLOAD_BYTES",
                           "publish an adapter instead, or ask the operator to raise the limit",
                           expected="the model's files", max_files=MAX_FILES + 1, max_fields=len(FIELDS))
    try:
        files, fields = {}, {}
        for field, value in form.multi_items():
            if isinstance(value, UploadFile):
                fname = value.filename or ""
                if fname in files:
                    raise InvalidAdapter("files", f"{fname} was sent twice: send each file once")
                files[fname] = value.file
            elif field in FIELDS:
                fields[field] = value
            else:
                raise InvalidRequest(f"unexpected form field {field!r}: send the files and the fields "
                                     f"{', '.join(FIELDS)}", param=field)
        if "kind" not in fields:
            raise InvalidAdapter("kind", "no 'kind' field: send kind=full (a full fine-tune) or kind=merged")
        manifest = await asyncio.to_thread(
            models.publish, tenant.name, name, files, kind=fields["kind"], uploader=tenant.name,
            metadata=json_field("metadata", fields["metadata"]) if "metadata" in fields else None,
            derived_from=json_field("derived_from", fields["derived_from"]) if "derived_from" in fields else None)
    finally:
        await form.close()
    return manifest


@router.get("")
async def list_models(tenant: TenantDep, gw: GatewayDep) -> dict:
    infos = await asyncio.to_thread(registry_of(gw).list_models, tenant.name)
    return {"data": [public_model(i) for i in infos]}


@router.get("/{name}")
async def get_model(name: str, tenant: TenantDep, gw: GatewayDep) -> dict:
    return public_model(await asyncio.to_thread(registry_of(gw).get_model, tenant.name, name))


@router.get("/{name}/versions/{ref}/files/{filename}")
async def download_file(name: str, ref: str, filename: str, tenant: TenantDep, gw: GatewayDep) -> Response:
    """One file of a version (`ref`: a version or an alias), checked against the manifest's SHA-256 here;
    `x-sha256` carries that digest so the client checks it again after the transfer."""
    manifest, data = await asyncio.to_thread(_verified_file, registry_of(gw), tenant.name, f"{name}@{ref}", filename)
    return Response(content=data, media_type="application/octet-stream",
                    headers={"x-sha256": manifest.files[filename].sha256, "x-version": manifest.version})


def _verified_file(models: ModelRegistry, tenant: str, ref: str, filename: str):
    """The version `ref` names and one file's stored bytes, checked against its manifest (in a worker thread:
    hashing a multi-GB shard must not stall the event loop)."""
    manifest = models.resolve(tenant, ref)
    data = models.open_file(manifest, filename)
    if hashlib.sha256(data).hexdigest() != manifest.files[filename].sha256:
        raise IntegrityError(f"{manifest.ref}/{filename}: the stored bytes do not match the manifest's SHA-256; "
                             "not served: check the object store")
    return manifest, data


class AliasMove(BaseModel):
    version: str
    expected_version: str | None = None


@router.put("/{name}/aliases/{alias}")
async def set_alias(name: str, alias: str, body: AliasMove, tenant: TenantDep, gw: GatewayDep) -> dict:
    async with audited(gw, AuditAction.MODEL_ALIAS, actor=tenant.name, tenant=tenant.name,
                       target=f"{name}@{alias}") as detail:
        detail.update(version=body.version, expected_version=body.expected_version)  # what was asked
        out = await asyncio.to_thread(registry_of(gw).set_alias, tenant.name, name, alias, body.version,
                                      body.expected_version)
        detail.clear()  # the swap held: the alias moved from expected_version (None: created) to version
        detail.update(before=out["previous_version"], after=out["version"])
    return out


@router.delete("/{name}/versions/{version}", status_code=204)
async def delete_version(name: str, version: str, tenant: TenantDep, gw: GatewayDep) -> Response:
    async with audited(gw, AuditAction.MODEL_DELETE, actor=tenant.name, tenant=tenant.name,
                       target=f"{name}@{version}"):
        await asyncio.to_thread(registry_of(gw).delete_version, tenant.name, name, version)
    return Response(status_code=204)
