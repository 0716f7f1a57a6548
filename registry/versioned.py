"""What adapters and models share: immutable content-addressed versions, CAS aliases, tenant-scoped lookups.

Consistency (see docs/registry.md): a version's files are written first, its manifest last, each with
a conditional create; a version exists exactly when its manifest does. Aliases change only by
conditional writes on their ETag. Every lookup is scoped to the caller's tenant prefix.

Subclasses say where their tree is (`ROOT`), what they are called in messages (`NOUN`, `API`) and what
their manifest and listing entry look like (`MANIFEST`, `INFO`: `{name, versions, aliases}`), and add their
own `publish`.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import wait
from typing import Generic, TypeVar

from pydantic import BaseModel

from common.errors import Conflict, InvalidAdapter, InvalidName, LoraplexError, ModelNotFound, VersionInUse
from common.names import NAME_RE, check_name
from registry import layout
from registry.aliases import list_aliases, read_alias_entry, swap_alias
from registry.errors import KeyMissing, PreconditionFailed
from registry.limits import check_limits
from registry.manifest import FileEntry, content_digest, is_version, manifest_copy, version_of
from registry.newest import indexed_newest, read_newest, write_newest
from registry.settings import RegistrySettings
from registry.store import PARALLEL_READS, ObjectStore

log = logging.getLogger(__name__)
DEFAULT_ALIAS = "prod"
MAX_METADATA_BYTES = 64 * 1024

M = TypeVar("M", bound=BaseModel)


class VersionedRegistry(Generic[M]):
    """Versions and aliases of named artifacts of every tenant under `ROOT/<tenant>/<name>/`."""

    ROOT = layout.ADAPTERS
    NOUN = "adapter"
    API = "/v1/adapters"
    MANIFEST: type[BaseModel]
    INFO: type[BaseModel]

    store: ObjectStore
    settings: RegistrySettings

    def names(self, tenant: str) -> list[str]:
        """Names of `tenant`'s artifacts with any object stored (versions or leftovers), sorted."""
        check_name(tenant, "tenant")
        return sorted({key.split("/")[2] for key in self.store.list(layout.tenant_prefix(tenant, self.ROOT))})

    def info(self, tenant: str, name: str):
        """An artifact's versions (newest first) and aliases as an `INFO`; ModelNotFound if it has no version."""
        check_name(tenant, "tenant")
        check_name(name, f"{self.NOUN} name")
        versions = self._versions(tenant, name)
        if not versions:
            raise ModelNotFound(f"{self.NOUN} {name!r} not found: list your {self.NOUN}s with GET {self.API}",
                                param="name")
        return self.INFO(name=name, versions=versions, aliases=self._aliases(tenant, name))

    def infos(self, tenant: str, limit: int | None = None, after: str | None = None) -> list:
        """`info` of every artifact of `tenant` with at least one version, sorted by name; a page of at most
        `limit` of them with names after `after` (only those pages' versions are read)."""
        found = []
        for name in self.names(tenant):
            if after is not None and name <= after:
                continue
            if limit is not None and len(found) >= limit:
                break
            try:
                found.append(self.info(tenant, name))
            except ModelNotFound:  # only leftovers, or deleted meanwhile
                continue
        return found

    def resolve(self, tenant: str, ref: str) -> M:
        """Resolve a name within `tenant`: `NAME`, `NAME@ALIAS` or `NAME@VERSION`.

        `NAME` means the `prod` alias if set, else the newest version. Anything missing or malformed
        raises ModelNotFound, whatever other tenants hold.
        """
        return self._resolve(tenant, ref)[0]

    def resolve_tagged(self, tenant: str, ref: str, known: tuple[M, str] | None = None) -> tuple[M, str]:
        """`resolve` for a caller that keeps answers and renews them: (manifest, tag).

        The tag is what a listing of the name shows of the objects the resolution read (the alias's ETag, or
        the versions there are). With `known` (an earlier answer for the same `ref`), one listing comes first;
        if it shows the same tag, the known manifest is still the answer and nothing more is read: one store
        call instead of the two to four of a resolution. Without, it is a plain resolution (no extra round
        trip on a cold start).
        """
        if known is not None:
            name = ref.partition("@")[0] if isinstance(ref, str) else ""
            if NAME_RE.fullmatch(tenant or "") and NAME_RE.fullmatch(name):
                listing = self.store.list_info(layout.adapter_prefix(tenant, name, self.ROOT))
                if self._listed_tag(tenant, ref, listing) == known[1]:
                    return known
        return self._resolve(tenant, ref)

    def _resolve(self, tenant: str, ref: str) -> tuple[M, str]:
        listing = "GET /v1/models" if self.ROOT == layout.ADAPTERS else f"GET {self.API}"
        not_found = ModelNotFound(f"model {str(ref)[:100]!r} not found: list your models with {listing}",
                                  param="model")
        name, _, selector = ref.partition("@") if isinstance(ref, str) else ("", "", "")
        if not NAME_RE.fullmatch(tenant or "") or not NAME_RE.fullmatch(name):
            raise not_found
        try:
            if is_version(selector):
                return self._manifest(tenant, name, selector), "version"
            if selector and NAME_RE.fullmatch(selector):
                manifest, etag = self._alias_target(tenant, name, selector)
                return manifest, f"alias {etag}"
            if not selector and "@" not in ref:
                return self._default_version(tenant, name)
        except (KeyMissing, ModelNotFound):
            pass
        raise not_found

    def _listed_tag(self, tenant: str, ref: str, listing: dict) -> str:
        """The tag `_resolve` would give `ref` if the objects were as `listing` shows them."""
        name, _, selector = ref.partition("@")
        if is_version(selector):
            return "version" if layout.manifest_key(tenant, name, selector, self.ROOT) in listing else "gone"
        alias = layout.alias_key(tenant, name, selector or DEFAULT_ALIAS, self.ROOT)
        if alias in listing:
            return f"{'alias' if selector else 'prod'} {listing[alias].etag}"
        if selector:
            return "gone"
        return "newest " + " ".join(sorted(k for k in listing if k.endswith("/manifest.json")))

    def set_alias(self, tenant: str, name: str, alias: str, version: str,
                  expected_version: str | None) -> dict:
        """Point `alias` at `version`, only if it points at `expected_version` now (compare-and-swap).

        Args:
            expected_version: the version the alias must point to now; None: the alias must not exist yet.

        Returns:
            `{"name", "alias", "version", "previous_version", "updated_at"}`.

        Raises:
            AliasConflict: the alias moved (or exists / does not exist); the message says how to retry.
            ModelNotFound: `version` is not a version of this artifact.
        """
        check_name(tenant, "tenant")
        check_name(name, f"{self.NOUN} name")
        check_name(alias, "alias")
        if is_version(alias):
            raise InvalidName(f"alias {alias!r} looks like a version id: pick a name that is not 16 hex digits",
                              param="alias")
        target = self._manifest(tenant, name, version)  # the target must exist
        updated_at = swap_alias(self.store, layout.alias_key(tenant, name, alias, self.ROOT), alias, version,
                                expected_version, manifest=target.model_dump(mode="json"))
        return {"name": name, "alias": alias, "version": version, "previous_version": expected_version,
                "updated_at": updated_at}

    def delete_version(self, tenant: str, name: str, version: str) -> None:
        """Delete a version: its manifest first (invisible at once), then its files.

        Raises:
            VersionInUse: an alias points at it. ModelNotFound: no such version.
        """
        check_name(tenant, "tenant")
        check_name(name, f"{self.NOUN} name")
        self._manifest(tenant, name, version)
        users = sorted(a for a, v in self._aliases(tenant, name).items() if v == version)
        if users:
            raise VersionInUse(f"version {version} is in use by alias {', '.join(users)}: point the alias at "
                               f"another version (PUT {self.API}/{name}/aliases/{users[0]}) and retry")
        self.store.delete(layout.manifest_key(tenant, name, version, self.ROOT))
        for key in self.store.list(layout.version_prefix(tenant, name, version, self.ROOT)):
            self.store.delete(key)
        self._index_newest(tenant, name)

    def open_file(self, manifest: M, filename: str) -> bytes:
        """The stored bytes of one file of a version (the cache verifies them against the manifest)."""
        return b"".join(self.stream_file(manifest, filename))

    def stream_file(self, manifest: M, filename: str) -> Iterator[bytes]:
        """The stored bytes of one file of a version as they arrive (the cache hashes them on the way)."""
        if filename not in manifest.files or not is_version(manifest.version):
            raise ModelNotFound(f"{filename!r} is not a file of {manifest.ref}")
        check_name(manifest.tenant, "tenant")
        check_name(manifest.name, f"{self.NOUN} name")
        chunks = self.store.get_chunks(layout.file_key(manifest.tenant, manifest.name, manifest.version, filename,
                                                       self.ROOT))
        try:
            first = next(chunks, b"")  # the GET happens here: a missing key is a 404 before any byte
        except KeyMissing:
            raise ModelNotFound(f"model {manifest.ref!r} was deleted: list your {self.NOUN}s with GET {self.API}",
                                param="model") from None
        return itertools.chain((first,), chunks)

    def _manifest(self, tenant: str, name: str, version: str) -> M:
        not_found = ModelNotFound(f"version {str(version)[:40]!r} of {self.NOUN} {name!r} not found: list versions "
                                  f"with GET {self.API}/{name}", param="version")
        if not is_version(version):
            raise not_found
        try:
            raw, _ = self.store.get(layout.manifest_key(tenant, name, version, self.ROOT))
        except KeyMissing:
            raise not_found from None
        manifest = self.MANIFEST.model_validate_json(raw)
        if (manifest.tenant, manifest.name, manifest.version) != (tenant, name, version):
            raise not_found  # a manifest copied to the wrong prefix never leaks across names or tenants
        return manifest

    def _store_version(self, tenant: str, name: str, entries: dict[str, FileEntry], read: Callable[[str], bytes],
                       make_manifest: Callable[[str, str], M]) -> M:
        """Make validated files a version: files first (conditional creates), the manifest last; idempotent.

        Args:
            entries: `{filename: FileEntry}` of the validated files; they name the version.
            read: the bytes of one file by name, asked for one file at a time.
            make_manifest: `(version, digest) -> manifest`, called only when these bytes are new.

        Returns:
            The version's manifest; the existing one if these bytes were published before.

        Raises:
            TenantLimitExceeded, TenantStorageFull: a new version over one of the tenant's storage limits.
        """
        digest = content_digest(entries)
        version = version_of(digest)
        existing = self._published(tenant, name, version, digest)
        if existing is not None:  # identical bytes: idempotent, and never counted against a limit twice
            return existing
        check_limits(self.store, self.settings, tenant, self.ROOT, name, sum(e.size for e in entries.values()))
        for filename in sorted(entries):
            self._put_file(layout.file_key(tenant, name, version, filename, self.ROOT), read(filename))
        manifest = self._put_manifest(make_manifest(version, digest), digest)
        self._index_newest(tenant, name, added=manifest)
        return manifest

    def _published(self, tenant: str, name: str, version: str, digest: str) -> M | None:
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

    def _put_manifest(self, manifest: M, digest: str) -> M:
        """Write the manifest last, by conditional create: from here on the version exists."""
        try:
            self.store.put(layout.manifest_key(manifest.tenant, manifest.name, manifest.version, self.ROOT),
                           manifest.model_dump_json().encode(), if_none_match=True)
        except PreconditionFailed:  # a concurrent upload of the same bytes won: return its manifest
            return self._published(manifest.tenant, manifest.name, manifest.version, digest) or manifest
        return manifest

    def _versions(self, tenant: str, name: str) -> list[M]:
        return self._listed_versions(tenant, name)[0]

    def _listed_versions(self, tenant: str, name: str, keys: list[str] | None = None) -> tuple[list[M], list[str]]:
        """The versions newest first, and the manifest keys listed (`keys`: the versions prefix, listed already)."""
        if keys is None:
            keys = self.store.list(layout.versions_prefix(tenant, name, self.ROOT))
        manifests = []
        for key in keys:
            if key.endswith("/manifest.json"):
                try:
                    manifests.append(self._manifest(tenant, name, key.split("/")[-2]))
                except ModelNotFound:  # deleted while we listed
                    continue
        return (sorted(manifests, key=lambda m: (m.created_at, m.version), reverse=True),
                [k for k in keys if k.endswith("/manifest.json")])

    def _default_version(self, tenant: str, name: str) -> tuple[M, str]:
        """The `prod` alias's version, else the newest; with the tag (see `resolve_tagged`). The versions are listed
        and the newest-version index read while the alias is: a cold start costs one round trip either way."""
        listing = PARALLEL_READS.submit(self.store.list, layout.versions_prefix(tenant, name, self.ROOT))
        index = PARALLEL_READS.submit(read_newest, self.store, layout.newest_key(tenant, name, self.ROOT))
        try:
            manifest, etag = self._alias_target(tenant, name, DEFAULT_ALIAS)
            wait((listing, index))  # no read of this call outlives it
            return manifest, f"prod {etag}"
        except KeyMissing:
            keys = [k for k in listing.result() if k.endswith("/manifest.json")]
            newest = indexed_newest(index.result(), keys, tenant, name, self.ROOT, self.MANIFEST)
            if newest is None:
                versions, keys = self._listed_versions(tenant, name, keys)
                if not versions:
                    raise
                newest = versions[0]
            return newest, "newest " + " ".join(sorted(keys))

    def _index_newest(self, tenant: str, name: str, added: M | None = None) -> None:
        """Rewrite the newest-version index from a listing: after an upload of `added`, from the index as it was
        if it matches the listing less `added` (no manifest read), else from every manifest the listing shows.
        Best effort: the upload or delete it follows is done, and a stale index is never used."""
        key = layout.newest_key(tenant, name, self.ROOT)
        try:
            keys = [k for k in self.store.list(layout.versions_prefix(tenant, name, self.ROOT))
                    if k.endswith("/manifest.json")]
            newest = None if added is None else self._newest_with(added, keys, key)
            if newest is None:
                versions, keys = self._listed_versions(tenant, name, keys)
                newest = versions[0] if versions else None
            write_newest(self.store, key, keys, newest.model_dump(mode="json") if newest else None)
        except LoraplexError:
            log.warning("could not update the newest-version index %s (resolutions read the manifests)", key,
                        exc_info=True)

    def _newest_with(self, added: M, keys: list[str], key: str) -> M | None:
        """The newest version once `added` is among the listed manifest `keys`, from the index as it was before
        (no manifest read); None if that index no longer matches the listing less `added`."""
        tenant, name = added.tenant, added.name
        before = [k for k in keys if k != layout.manifest_key(tenant, name, added.version, self.ROOT)]
        if not before:
            return added
        known = indexed_newest(read_newest(self.store, key), before, tenant, name, self.ROOT, self.MANIFEST)
        return None if known is None else max((known, added), key=lambda m: (m.created_at, m.version))

    def _aliases(self, tenant: str, name: str) -> dict[str, str]:
        return list_aliases(self.store, layout.aliases_prefix(tenant, name, self.ROOT))

    def _alias_target(self, tenant: str, name: str, alias: str) -> tuple[M, str]:
        """(manifest of the version the alias points at, the alias's ETag); KeyMissing if there is no alias.
        The manifest is the copy in the alias object when there is one (one read, not two)."""
        key = layout.alias_key(tenant, name, alias, self.ROOT)
        version, etag, copy = read_alias_entry(self.store, key)
        if version is None:
            raise KeyMissing(key)
        manifest = manifest_copy(self.MANIFEST, copy, tenant, name, version) if copy is not None else None
        return manifest or self._manifest(tenant, name, version), etag


def check_metadata(metadata: dict | None, what: str = "metadata") -> dict:
    """`metadata` (or {} for None) if it is a JSON object of at most 64 KiB; InvalidAdapter otherwise."""
    if metadata is None:
        return {}
    try:
        size = len(json.dumps(metadata))
    except (TypeError, ValueError):
        raise InvalidAdapter("metadata", f"{what} must be a JSON object of plain values") from None
    if not isinstance(metadata, dict) or size > MAX_METADATA_BYTES:
        raise InvalidAdapter("metadata", f"{what} must be a JSON object of at most {MAX_METADATA_BYTES} bytes")
    return metadata
