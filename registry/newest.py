"""The newest-version index of a name: `<root>/<tenant>/<name>/newest.json`.

`NAME` without a `prod` alias means the newest version, which takes the versions' listing and then their
manifests (the newest is the latest `created_at`): two round trips, or more, on every cold resolution. The
index holds the newest manifest together with the manifest keys it was chosen from; a reader that lists the
versions anyway (in parallel with reading the `prod` alias and this index) uses it only when the listing shows
exactly those keys. So the index can never give a wrong answer: one left behind by a crash, or written by the
slower of two concurrent uploads, no longer matches and the reader falls back to reading the manifests.
It is rewritten after each new version and each deleted one; a failed rewrite costs speed, not correctness.
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from common.errors import LoraplexError
from registry import layout
from registry.errors import KeyMissing
from registry.manifest import manifest_copy
from registry.store import ObjectStore


def write_newest(store: ObjectStore, key: str, keys: list[str], newest: dict | None) -> None:
    """Record `newest` (a manifest as JSON) as the newest of the versions whose manifest keys are `keys`; with
    no version left, remove the index."""
    if newest is None:
        store.delete(key)
    else:
        store.put(key, json.dumps({"keys": sorted(keys), "manifest": newest}).encode())


def read_newest(store: ObjectStore, key: str) -> tuple[list[str], dict] | None:
    """(manifest keys, newest manifest as JSON) of the index at `key`, or None if there is none (or it is not
    one: never an error, a reader falls back)."""
    try:
        raw, _ = store.get(key)
        doc = json.loads(raw)
        keys, manifest = doc["keys"], doc["manifest"]
    except (KeyMissing, LoraplexError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(keys, list) or not isinstance(manifest, dict):
        return None
    return keys, manifest


def indexed_newest(index: tuple[list[str], dict] | None, keys: list[str], tenant: str, name: str, root: str,
                   model: type[BaseModel]):
    """The index's newest manifest (as `model`) if it was chosen from exactly the listed manifest `keys` and
    names this tenant's name and one of those versions; else None (the manifests decide)."""
    if index is None or not keys or sorted(index[0]) != sorted(keys):
        return None
    manifest = manifest_copy(model, index[1], tenant, name)
    if manifest is None or layout.manifest_key(tenant, name, manifest.version, root) not in keys:
        return None
    return manifest
