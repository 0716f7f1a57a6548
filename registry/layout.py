"""The key layout of the registry bucket, in one place (documented in docs/registry.md).

Every name in a key has passed `common.names.check_name` (or is a version id of 16 hex chars, or a
SHA-256 hex digest), so no key can contain `/`, `..` or anything outside [a-z0-9_-].
"""

from __future__ import annotations


def tenant_key(tenant: str) -> str:
    """The tenant record."""
    return f"tenants/{tenant}.json"


def key_index_key(key_sha256: str) -> str:
    """The API-key index: key hash -> tenant."""
    return f"keys/{key_sha256}.json"


def tenant_prefix(tenant: str) -> str:
    """Everything a tenant's adapters store."""
    return f"adapters/{tenant}/"


def adapter_prefix(tenant: str, name: str) -> str:
    """Versions and aliases of one adapter."""
    return f"adapters/{tenant}/{name}/"


def versions_prefix(tenant: str, name: str) -> str:
    return f"adapters/{tenant}/{name}/versions/"


def version_prefix(tenant: str, name: str, version: str) -> str:
    """The files and manifest of one immutable version."""
    return f"adapters/{tenant}/{name}/versions/{version}/"


def manifest_key(tenant: str, name: str, version: str) -> str:
    """Written last: a version exists exactly when this object does."""
    return version_prefix(tenant, name, version) + "manifest.json"


def file_key(tenant: str, name: str, version: str, filename: str) -> str:
    return version_prefix(tenant, name, version) + filename


def aliases_prefix(tenant: str, name: str) -> str:
    return f"adapters/{tenant}/{name}/aliases/"


def alias_key(tenant: str, name: str, alias: str) -> str:
    """A small JSON object `{"version", ...}`, changed only by conditional writes."""
    return f"adapters/{tenant}/{name}/aliases/{alias}.json"
