"""Adapters: publish immutable versions, move aliases by compare-and-swap, resolve model names.

Versions, aliases, resolution and deletion are shared with models (registry/versioned.py); what is
adapter-specific is the validation gate (with its probes), the health summary and the manifest.
"""

from __future__ import annotations

from pydantic import BaseModel

from common.names import check_name
from registry.base_check import BY_FINGERPRINT, BY_SHAPES, check_served_base
from registry.base_spec import BaseModelSpec
from registry.health import upload_health
from registry.manifest import Manifest, file_entries, utc_now
from registry.settings import RegistrySettings
from registry.store import ObjectStore
from registry.validation import AdapterValidator
from registry.versioned import VersionedRegistry, check_metadata


class AdapterInfo(BaseModel):
    """One adapter of a tenant: its versions (newest first) and aliases (alias -> version)."""

    name: str
    versions: list[Manifest]
    aliases: dict[str, str]


class AdapterRegistry(VersionedRegistry[Manifest]):
    """The adapters of every tenant, in the registry bucket (`adapters/<tenant>/<name>/...`).

    Args:
        store: the registry bucket.
        settings: caps and the base model used by validation.
        base_spec: the served base; default: read from `settings.base_model` if set, else no base checks.
        probes: checks run after the static gate (the gateway passes `registry.noop_probe.default_probes`).
    """

    MANIFEST = Manifest
    INFO = AdapterInfo

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
        metadata = check_metadata(metadata)
        adapter = self.validator.validate(files)
        entries = file_entries(files)
        base_check = None if self.base_spec is None else BY_FINGERPRINT if adapter.trained_on else BY_SHAPES

        def manifest(version: str, digest: str) -> Manifest:
            return Manifest(
                tenant=tenant, name=name, version=version, sha256=digest, files=entries,
                size_bytes=sum(e.size for e in entries.values()), rank=adapter.rank, alpha=adapter.alpha,
                target_modules=adapter.target_modules,
                base_model=self.base_spec.fingerprint if self.base_spec else None, base_check=base_check,
                created_at=utc_now(), uploader=uploader, metadata=metadata, health=upload_health(files))

        return self._store_version(tenant, name, entries, files.__getitem__, manifest)

    def check_served(self, manifest: Manifest) -> None:
        """Raise BaseMismatch (409) if `manifest` was validated against another base than the served one."""
        check_served_base(manifest, self.base_spec.fingerprint if self.base_spec else None)

    list_adapters = VersionedRegistry.infos  # every adapter of a tenant with a version, by name
    get_adapter = VersionedRegistry.info  # one adapter's versions (newest first) and aliases

