"""Alias objects: `adapters/<tenant>/<name>/aliases/<alias>.json`, changed only by conditional writes.

An alias write is a compare-and-swap: If-None-Match: * to create, If-Match: <ETag read> to move. Every
write carries a fresh `write_id`, so its bytes, and with them its ETag, are new: were two writes'
bytes equal (the same target, the same millisecond), a writer holding a stale ETag could match again
after the alias moved away and back (ABA), and two racing movers could both win.

An alias object also carries a copy of its target's manifest (`manifest`): versions are immutable, so the copy
never goes stale, and resolving `NAME@ALIAS` (or `NAME`) then costs one read instead of two, the round trip that
dominated a cold adapter's first request after the download and the engine load. Objects written before the
copy existed have none; readers then read the manifest itself.
"""

from __future__ import annotations

import json
import uuid

from common.errors import AliasConflict
from registry.errors import KeyMissing, PreconditionFailed
from registry.manifest import utc_now
from registry.store import ObjectStore


def read_alias(store: ObjectStore, key: str) -> tuple[str | None, str | None]:
    """(version, ETag) of the alias object at `key`; (None, None) if there is none."""
    version, etag, _ = read_alias_entry(store, key)
    return version, etag


def read_alias_entry(store: ObjectStore, key: str) -> tuple[str | None, str | None, dict | None]:
    """(version, ETag, the target's manifest as written with the alias, or None) of the alias object at `key`;
    (None, None, None) if there is none."""
    try:
        raw, etag = store.get(key)
    except KeyMissing:
        return None, None, None
    doc = json.loads(raw)
    manifest = doc.get("manifest")
    return doc["version"], etag, manifest if isinstance(manifest, dict) else None


def list_aliases(store: ObjectStore, prefix: str) -> dict[str, str]:
    """alias -> version for every alias object under `prefix`."""
    aliases = {}
    for key in store.list(prefix):
        version, _ = read_alias(store, key)
        if version is not None:  # deleted while we listed
            aliases[key.rsplit("/", 1)[-1].removesuffix(".json")] = version
    return aliases


def swap_alias(store: ObjectStore, key: str, alias: str, version: str, expected_version: str | None,
               manifest: dict | None = None) -> str:
    """Point the alias at `version` if it points at `expected_version` now (None: if it does not exist), with
    `manifest` (the version's, as JSON) copied into the alias object.

    Returns:
        The write's `updated_at`.

    Raises:
        AliasConflict: the alias is elsewhere (or exists, or does not); the message says how to retry.
    """
    updated_at = utc_now()
    doc = {"version": version, "updated_at": updated_at, "write_id": uuid.uuid4().hex}
    if manifest is not None:
        doc["manifest"] = manifest
    body = json.dumps(doc).encode()
    if expected_version is None:
        condition: dict = {"if_none_match": True}
    else:
        current, etag = read_alias(store, key)
        if current != expected_version:
            raise alias_conflict(alias, current, expected_version)
        condition = {"if_match": etag}
    try:
        store.put(key, body, **condition)
    except PreconditionFailed:
        raise alias_conflict(alias, read_alias(store, key)[0], expected_version) from None
    return updated_at


def alias_conflict(alias: str, current: str | None, expected: str | None) -> AliasConflict:
    """The 409 for a lost compare-and-swap, saying where the alias is and how to retry."""
    retry = f"expected_version={current!r}" if current else "expected_version=null"
    now = f"points to {current}" if current else "does not exist"
    return AliasConflict(f"alias {alias!r} {now}, not {expected!r}: re-read it and retry with {retry}",
                         param="expected_version")
