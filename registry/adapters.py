"""Adapters: publish immutable versions, move aliases by compare-and-swap, resolve model names.

Consistency (see docs/registry.md): a version's files are written first, its manifest last, each with
a conditional create; a version exists exactly when its manifest does. Aliases change only by
conditional writes on their ETag. Every lookup is scoped to the caller's tenant prefix.
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from common.errors import Conflict, InvalidAdapter, InvalidName, ModelNotFound, VersionInUse
from common.names import NAME_RE, check_name
from registry import layout
from registry.aliases import list_aliases, read_alias, swap_alias
from registry.base_spec import BaseModelSpec
from registry.errors import KeyMissing, PreconditionFailed
from registry.health import upload_health
from registry.manifest import (ADAPTER_FILES, Manifest, content_digest, file_entries, is_version, utc_now,
                               version_of)
from registry.settings import RegistrySettings
from registry.store import ObjectStore
from registry.validation import AdapterValidator

DEFAULT_ALIAS = "prod"
MAX_METADATA_BYTES = 64 * 1024


class AdapterInfo(BaseModel):
    """One adapter of a tenant: its versions (newest first) and aliases (alias -> version)."""

    name: str
    versions: list[Manifest]
    aliases: dict[str, str]


class AdapterRegistry:
    """The adapters of every tenant, in the registry bucket.

    Args:
        store: the registry bucket.
        settings: caps and the base model used by validation.
        base_spec: the served base; default: read from `settings.base_model` if set, else no base checks.
        probes: checks run after the static gate (the gateway passes `registry.probe.default_probes`).
    """

    def __init__(self, store: ObjectStore, settings: RegistrySettings, base_spec: BaseModelSpec | None = None,
                 probes: list | None = None):
        self.store = store
        self.settings = settings
        if base_spec is None and settings.base_model is not None:
            base_spec = BaseModelSpec.from_dir(settings.base_model)
        self.base_spec = base_spec
        self.validator = AdapterValidator.from_settings(settings, base_spec)
        self.validator.probes.extend(probes or [])

    def publish(self, tenant: str, name: str, files: dict[str, bytes], *, uploader: str,
                metadata: dict | None = None) -> Manifest:
        """Validate `files` and make them a version of `tenant`'s adapter `name`; idempotent.

        Args:
            tenant: the owning tenant (from authentication).
            name: adapter name.
            files: exactly `adapter_config.json` and `adapter_model.safetensors`.
            uploader: who uploaded (recorded in the manifest).
            metadata: optional training metadata (JSON, at most 64 KiB).

        Returns:
            The version's manifest; the existing one if these bytes were published before.

        Raises:
            InvalidName, InvalidAdapter: refused upload. StorageUnavailable: the store is down.
        """
        check_name(tenant, "tenant")
        check_name(name, "adapter name")
        metadata = _check_metadata(metadata)
        adapter = self.validator.validate(files)
        entries = file_entries(files)
        digest = content_digest(entries)
        version = version_of(digest)
        existing = self._published(tenant, name, version, digest)
        if existing is not None:
            return existing
        for filename in ADAPTER_FILES:
            self._put_file(layout.file_key(tenant, name, version, filename), files[filename])
        manifest = Manifest(
            tenant=tenant, name=name, version=version, sha256=digest, files=entries,
            size_bytes=sum(e.size for e in entries.values()), rank=adapter.rank, alpha=adapter.alpha,
            target_modules=adapter.target_modules,
            base_model=self.base_spec.fingerprint if self.base_spec else None,
            created_at=utc_now(), uploader=uploader, metadata=metadata, health=upload_health(files))
        try:
            self.store.put(layout.manifest_key(tenant, name, version), manifest.model_dump_json().encode(),
                           if_none_match=True)
        except PreconditionFailed:  # a concurrent upload of the same bytes won: return its manifest
            return self._published(tenant, name, version, digest) or manifest
        return manifest

    def list_adapters(self, tenant: str) -> list[AdapterInfo]:
        """Every adapter of `tenant` with at least one version, sorted by name."""
        check_name(tenant, "tenant")
        names = sorted({key.split("/")[2] for key in self.store.list(layout.tenant_prefix(tenant))})
        infos = []
        for name in names:
            try:
                infos.append(self.get_adapter(tenant, name))
            except ModelNotFound:  # only leftovers, or deleted meanwhile
                continue
        return infos

    def get_adapter(self, tenant: str, name: str) -> AdapterInfo:
        """One adapter's versions (newest first) and aliases; ModelNotFound if it has no version."""
        check_name(tenant, "tenant")
        check_name(name, "adapter name")
        versions = self._versions(tenant, name)
        if not versions:
            raise ModelNotFound(f"adapter {name!r} not found: list your adapters with GET /v1/adapters",
                                param="name")
        return AdapterInfo(name=name, versions=versions, aliases=self._aliases(tenant, name))

    def resolve(self, tenant: str, ref: str) -> Manifest:
        """Resolve a model name within `tenant`: `NAME`, `NAME@ALIAS` or `NAME@VERSION`.

        `NAME` means the `prod` alias if set, else the newest version. Anything missing or malformed
        raises ModelNotFound, whatever other tenants hold.
        """
        not_found = ModelNotFound(f"model {str(ref)[:100]!r} not found: list your models with GET /v1/models",
                                  param="model")
        name, _, selector = ref.partition("@") if isinstance(ref, str) else ("", "", "")
        if not NAME_RE.fullmatch(tenant or "") or not NAME_RE.fullmatch(name):
            raise not_found
        try:
            if is_version(selector):
                return self._manifest(tenant, name, selector)
            if selector and NAME_RE.fullmatch(selector):
                return self._manifest(tenant, name, self._alias_target(tenant, name, selector))
            if not selector and "@" not in ref:
                return self._default_version(tenant, name)
        except (KeyMissing, ModelNotFound):
            pass
        raise not_found

    def set_alias(self, tenant: str, name: str, alias: str, version: str,
                  expected_version: str | None) -> dict:
        """Point `alias` at `version`, only if it points at `expected_version` now (compare-and-swap).

        Args:
            expected_version: the version the alias must point to now; None: the alias must not exist yet.

        Returns:
            `{"name", "alias", "version", "previous_version", "updated_at"}`.

        Raises:
            AliasConflict: the alias moved (or exists / does not exist); the message says how to retry.
            ModelNotFound: `version` is not a version of this adapter.
        """
        check_name(tenant, "tenant")
        check_name(name, "adapter name")
        check_name(alias, "alias")
        if is_version(alias):
            raise InvalidName(f"alias {alias!r} looks like a version id: pick a name that is not 16 hex digits",
                              param="alias")
        self._manifest(tenant, name, version)  # the target must exist
        updated_at = swap_alias(self.store, layout.alias_key(tenant, name, alias), alias, version, expected_version)
        return {"name": name, "alias": alias, "version": version, "previous_version": expected_version,
                "updated_at": updated_at}

    def delete_version(self, tenant: str, name: str, version: str) -> None:
        """Delete a version: its manifest first (invisible at once), then its files.

        Raises:
            VersionInUse: an alias points at it. ModelNotFound: no such version.
        """
        check_name(tenant, "tenant")
        check_name(name, "adapter name")
        self._manifest(tenant, name, version)
        users = sorted(a for a, v in self._aliases(tenant, name).items() if v == version)
        if users:
            raise VersionInUse(f"version {version} is in use by alias {', '.join(users)}: point the alias at "
                               f"another version (PUT /v1/adapters/{name}/aliases/{users[0]}) and retry")
        self.store.delete(layout.manifest_key(tenant, name, version))
        for key in self.store.list(layout.version_prefix(tenant, name, version)):
            self.store.delete(key)

    def open_file(self, manifest: Manifest, filename: str) -> bytes:
        """The stored bytes of one file of a version (the cache verifies them against the manifest)."""
        if filename not in manifest.files or not is_version(manifest.version):
            raise ModelNotFound(f"{filename!r} is not a file of {manifest.ref}")
        check_name(manifest.tenant, "tenant")
        check_name(manifest.name, "adapter name")
        try:
            return self.store.get(layout.file_key(manifest.tenant, manifest.name, manifest.version, filename))[0]
        except KeyMissing:
            raise ModelNotFound(f"model {manifest.ref!r} was deleted: list your models with GET /v1/models",
                                param="model") from None

    def _manifest(self, tenant: str, name: str, version: str) -> Manifest:
        not_found = ModelNotFound(f"version {str(version)[:40]!r} of adapter {name!r} not found: list versions "
                                  f"with GET /v1/adapters/{name}", param="version")
        if not is_version(version):
            raise not_found
        try:
            raw, _ = self.store.get(layout.manifest_key(tenant, name, version))
        except KeyMissing:
            raise not_found from None
        manifest = Manifest.model_validate_json(raw)
        if (manifest.tenant, manifest.name, manifest.version) != (tenant, name, version):
            raise not_found  # a manifest copied to the wrong prefix never leaks across names or tenants
        return manifest

    def _published(self, tenant: str, name: str, version: str, digest: str) -> Manifest | None:
        try:
            manifest = self._manifest(tenant, name, version)
        except ModelNotFound:
            return None
        if manifest.sha256 != digest:
            raise Conflict(f"version id {version} of {name!r} already names other bytes (a 64-bit prefix "
                           "collision): change any byte of the upload, e.g. its metadata in the config, and retry")
        return manifest

    def _put_file(self, key: str, data: bytes) -> None:
        """Create a version file; an identical existing one (an earlier or concurrent upload) is fine."""
        try:
            self.store.put(key, data, if_none_match=True)
            return
        except PreconditionFailed:
            current, etag = self.store.get(key)
        if current != data:  # not visible (no manifest yet), so repairing it harms no reader
            self.store.put(key, data, if_match=etag)

    def _versions(self, tenant: str, name: str) -> list[Manifest]:
        keys = self.store.list(layout.versions_prefix(tenant, name))
        manifests = []
        for key in keys:
            if key.endswith("/manifest.json"):
                try:
                    manifests.append(self._manifest(tenant, name, key.split("/")[-2]))
                except ModelNotFound:  # deleted while we listed
                    continue
        return sorted(manifests, key=lambda m: (m.created_at, m.version), reverse=True)

    def _default_version(self, tenant: str, name: str) -> Manifest:
        try:
            return self._manifest(tenant, name, self._alias_target(tenant, name, DEFAULT_ALIAS))
        except KeyMissing:
            versions = self._versions(tenant, name)
            if not versions:
                raise
            return versions[0]

    def _aliases(self, tenant: str, name: str) -> dict[str, str]:
        return list_aliases(self.store, layout.aliases_prefix(tenant, name))

    def _alias_target(self, tenant: str, name: str, alias: str) -> str:
        key = layout.alias_key(tenant, name, alias)
        version, _ = read_alias(self.store, key)
        if version is None:
            raise KeyMissing(key)
        return version


def _check_metadata(metadata: dict | None) -> dict:
    if metadata is None:
        return {}
    try:
        size = len(json.dumps(metadata))
    except (TypeError, ValueError):
        raise InvalidAdapter("metadata", "metadata must be a JSON object of plain values") from None
    if not isinstance(metadata, dict) or size > MAX_METADATA_BYTES:
        raise InvalidAdapter("metadata", f"metadata must be a JSON object of at most {MAX_METADATA_BYTES} bytes")
    return metadata
