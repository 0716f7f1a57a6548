"""The key layout of the registry bucket, in one place (documented in docs/registry.md).

Two trees of the same shape: `adapters/<tenant>/<name>/...` (LoRA adapters) and `models/<tenant>/<name>/...`
(full fine-tunes and merged models); the functions below take `root=MODELS` for the second.

Every name in a key has passed `common.names.check_name` (or is a version id of 16 hex chars, or a
SHA-256 hex digest, or a model file name checked by registry/model_registry.py), so no key can contain `/` or `..`.
"""

from __future__ import annotations

ADAPTERS, MODELS = "adapters", "models"  # LoRA adapters; full fine-tunes and merged models


def _root(root: str) -> str:
    if root not in (ADAPTERS, MODELS):  # never a user string: a typo must not invent a prefix
        raise ValueError(f"unknown registry root {root!r}")
    return root


# Rewritten after every write of an object that a resolution or an authentication reads (`watched`): a gateway
# that finds its ETag unchanged knows its remembered answers still hold (serving/gateway.py).
GENERATION_KEY = "generation.json"


def watched(key: str) -> bool:
    """Does a write of `key` change what a name resolves to or what a key authenticates as?"""
    return key.startswith(("tenants/", "keys/")) or key.endswith("/manifest.json") or (
        "/aliases/" in key and key.startswith((f"{ADAPTERS}/", f"{MODELS}/")))


def tenant_key(tenant: str) -> str:
    """The tenant record."""
    return f"tenants/{tenant}.json"


def key_index_key(key_sha256: str) -> str:
    """The API-key index: key hash -> tenant."""
    return f"keys/{key_sha256}.json"


def tenant_prefix(tenant: str, root: str = ADAPTERS) -> str:
    """Everything a tenant's adapters (or, with root=MODELS, its models) store."""
    return f"{_root(root)}/{tenant}/"


def adapter_prefix(tenant: str, name: str, root: str = ADAPTERS) -> str:
    """Versions and aliases of one adapter (or model)."""
    return f"{_root(root)}/{tenant}/{name}/"


def newest_key(tenant: str, name: str, root: str = ADAPTERS) -> str:
    """The newest version's manifest with the manifest keys it was chosen from (registry/newest.py): an index,
    used only while a listing shows exactly those keys."""
    return adapter_prefix(tenant, name, root) + "newest.json"


def versions_prefix(tenant: str, name: str, root: str = ADAPTERS) -> str:
    return adapter_prefix(tenant, name, root) + "versions/"


def version_prefix(tenant: str, name: str, version: str, root: str = ADAPTERS) -> str:
    """The files and manifest of one immutable version."""
    return versions_prefix(tenant, name, root) + f"{version}/"


def manifest_key(tenant: str, name: str, version: str, root: str = ADAPTERS) -> str:
    """Written last: a version exists exactly when this object does."""
    return version_prefix(tenant, name, version, root) + "manifest.json"


def file_key(tenant: str, name: str, version: str, filename: str, root: str = ADAPTERS) -> str:
    return version_prefix(tenant, name, version, root) + filename


def aliases_prefix(tenant: str, name: str, root: str = ADAPTERS) -> str:
    return adapter_prefix(tenant, name, root) + "aliases/"


def alias_key(tenant: str, name: str, alias: str, root: str = ADAPTERS) -> str:
    """A small JSON object `{"version", ...}`, changed only by conditional writes."""
    return aliases_prefix(tenant, name, root) + f"{alias}.json"


def pin_key(tenant: str, name: str, ref: str) -> str:
    """An operator's pin of `tenant`'s adapter `name` at `ref` (an alias, followed as it moves, or a version)."""
    return f"{pins_prefix(tenant)}{name}/{ref}.json"


def pins_prefix(tenant: str | None = None) -> str:
    """Every pin (of one tenant, if given)."""
    return "pins/" if tenant is None else f"pins/{tenant}/"
