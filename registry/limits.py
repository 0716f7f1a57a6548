"""Per-tenant storage limits, checked when a new version is about to be written (docs/registry.md).

Three limits from RegistrySettings (0: unlimited): adapters per tenant (models counted separately against
the same number), versions per adapter or model, and bytes stored per tenant over adapters and models.
Usage is what is visible: versions with a manifest (leftovers of a crashed upload count for nothing, and a
retry reuses them), bytes as the manifests' `size_bytes` (the versions' files). It is read with one LIST
per tree, so the check costs no GET per version.

Best effort under concurrency: two uploads that start together may both pass the check and exceed a limit
by one version each; the next upload is refused. Re-publishing identical bytes never reaches this check
(the version exists already), so it is allowed at the limit and counts once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.errors import TenantLimitExceeded, TenantStorageFull
from registry import layout
from registry.settings import RegistrySettings
from registry.store import ObjectStore

MANIFEST = "manifest.json"
API = {layout.ADAPTERS: "/v1/adapters", layout.MODELS: "/v1/artifacts/models"}


@dataclass
class Usage:
    """One tree (adapters or models) of one tenant: versions per name and bytes of those versions' files."""

    versions: dict[str, int] = field(default_factory=dict)
    bytes: int = 0


def tree_usage(sizes: dict[str, int]) -> Usage:
    """Usage from a listing (`{key: size}`) of `<root>/<tenant>/`: only versions with a manifest count."""
    files: dict[tuple[str, str], int] = {}
    visible: set[tuple[str, str]] = set()
    for key, size in sizes.items():
        parts = key.split("/")  # <root>/<tenant>/<name>/versions/<version>/<file>
        if len(parts) != 6 or parts[3] != "versions":
            continue  # aliases
        version = (parts[2], parts[4])
        if parts[5] == MANIFEST:
            visible.add(version)
        else:
            files[version] = files.get(version, 0) + size
    usage = Usage()
    for name, version in visible:
        usage.versions[name] = usage.versions.get(name, 0) + 1
        usage.bytes += files.get((name, version), 0)
    return usage


def check_limits(store: ObjectStore, settings: RegistrySettings, tenant: str, root: str, name: str,
                 new_bytes: int) -> None:
    """Refuse a new version of `name` (`new_bytes` of files) in `root` if it would pass one of `tenant`'s limits.

    Raises:
        TenantLimitExceeded (409): versions per adapter, or adapters per tenant, naming the setting.
        TenantStorageFull (413): the tenant's stored bytes, naming the setting.
    """
    noun, api = ("adapter" if root == layout.ADAPTERS else "model"), API[root]
    free = (f"delete versions you no longer need (DELETE {api}/{{name}}/versions/{{version}}; list them with "
            f"GET {api}) and upload again, or ask the operator to raise the limit")
    limits = (settings.max_versions_per_adapter, settings.max_adapters_per_tenant, settings.max_tenant_stored_bytes)
    if not any(limits):
        return
    mine = tree_usage(store.list_sizes(layout.tenant_prefix(tenant, root)))
    have = mine.versions.get(name, 0)
    if settings.max_versions_per_adapter and have >= settings.max_versions_per_adapter:
        raise TenantLimitExceeded(
            f"{noun} {name!r} has {have} versions, the limit (LORAPLEX_MAX_VERSIONS_PER_ADAPTER="
            f"{settings.max_versions_per_adapter}): {free}", param="name")
    if settings.max_adapters_per_tenant and not have and len(mine.versions) >= settings.max_adapters_per_tenant:
        raise TenantLimitExceeded(
            f"you have {len(mine.versions)} {noun}s, the limit (LORAPLEX_MAX_ADAPTERS_PER_TENANT="
            f"{settings.max_adapters_per_tenant}); a {noun} whose last version is deleted frees its place: {free}",
            param="name")
    if settings.max_tenant_stored_bytes:
        other = layout.MODELS if root == layout.ADAPTERS else layout.ADAPTERS
        stored = mine.bytes + tree_usage(store.list_sizes(layout.tenant_prefix(tenant, other))).bytes
        if stored + new_bytes > settings.max_tenant_stored_bytes:
            raise TenantStorageFull(
                f"this version ({new_bytes} bytes) would bring your stored bytes (adapters and models) from {stored} "
                f"to {stored + new_bytes}, over the limit (LORAPLEX_MAX_TENANT_STORED_BYTES="
                f"{settings.max_tenant_stored_bytes}): {free}")
