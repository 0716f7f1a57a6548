"""The local cache of registry versions (adapters the engine loads from disk, and full or merged models).

Every file is checked against the manifest's SHA-256 before its directory appears; a directory appears
whole or not at all (download into a temp dir, then one atomic rename). One download per version at
a time (single-flight), and a byte budget kept by a scan-resistant segmented LRU (registry/slru.py): a burst
of versions used once evicts other versions used once, not the popular ones. Files stream from the store
into the hash and onto disk together, so verifying costs no pass of its own; a version's files are fetched
at once (an adapter's config and weights: one store round trip on a cold start, not two).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import wait
from pathlib import Path

from common.errors import IntegrityError, ModelNotFound
from common.names import check_name
from registry.manifest import Manifest, is_version
from registry.settings import RegistrySettings
from registry.slru import SegmentedLRU, TierUsage
from registry.store import PARALLEL_READS

Fetch = Callable[[Manifest, str], bytes | Iterable[bytes]]  # the whole file, or its chunks as they arrive


class ArtifactCache:
    """Verified version directories under `settings.cache_dir/<tenant>/<name>/<version>/` (adapters, or models
    with `ModelRegistry.cache`'s settings).

    Args:
        settings: `cache_dir` and `cache_max_bytes`.
        fetch: returns the stored bytes of one file of a version (`open_file` of the adapter or model registry),
            whole or as an iterable of chunks (`stream_file`).

    Attributes set by the owner (the gateway): `keep(key)` says an entry must stay (pinned); `on_change(usage)`
    hears what the cache holds after each change; `observe(stage, seconds)` hears the download and verify times.
    """

    def __init__(self, settings: RegistrySettings, fetch: Fetch):
        self.root = Path(settings.cache_dir)
        self.max_bytes = settings.cache_max_bytes
        self.fetch = fetch
        self.stats = {"hits": 0, "downloads": 0, "refetches": 0, "evictions": 0}
        self._lock = threading.Lock()  # guards _entries, _locks and stats
        self._locks: dict[str, threading.Lock] = {}
        self._entries = SegmentedLRU(self.max_bytes)  # key -> bytes
        self._tmp = self.root / ".tmp"
        self.keep: Callable[[str], bool] = lambda _key: False
        self.on_change: Callable[[TierUsage], None] = lambda _usage: None
        self.observe: Callable[[str, float], None] = lambda _stage, _seconds: None
        self._load()

    def ensure_local(self, manifest: Manifest, *, verify: bool = False) -> Path:
        """Return a local directory holding the version's files, downloading them if needed.

        Args:
            manifest: the version to make local.
            verify: re-hash the cached files even on a hit (a hit otherwise checks sizes only).

        Raises:
            IntegrityError: the store returned bytes that do not match the manifest (nothing is cached).
        """
        key = _entry_key(manifest)
        path = self.root / key
        with self._key_lock(key):
            if self._intact(path, manifest, verify):
                self._count("hits")
            else:
                if path.exists():  # damaged on disk: fetch again
                    self._count("refetches")
                    _remove(path, self._tmp)
                self._download(manifest, path)
            self._touch(key, path, manifest.size_bytes)
            self._evict(keep=key)
        return path

    def total_bytes(self) -> int:
        """Bytes held by cached versions."""
        with self._lock:
            return self._entries.bytes

    def holds(self, manifest: Manifest) -> bool:
        """Whether the version is in the cache index (no disk access: cheap enough for every request)."""
        with self._lock:
            return _entry_key(manifest) in self._entries

    def usage(self) -> TierUsage:
        with self._lock:
            return self._entries.usage(pinned=sum(1 for k in self._entries if self.keep(k)))

    def _download(self, manifest: Manifest, path: Path) -> None:
        tmp = self._tmp / uuid.uuid4().hex
        tmp.mkdir(parents=True)
        started = time.monotonic()
        try:
            fetches = [PARALLEL_READS.submit(self._fetch_file, manifest, name, entry, tmp / name)
                       for name, entry in manifest.files.items()]
            wait(fetches)  # every fetch is done before tmp is removed, failed or not
            verify_s = sum(f.result() for f in fetches)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, path)  # atomic: the directory appears complete or not at all
            except OSError:  # another process published it first
                if not self._intact(path, manifest, verify=True):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._count("downloads")
        self.observe("download", time.monotonic() - started - verify_s)
        self.observe("verify", verify_s)

    def _fetch_file(self, manifest: Manifest, filename: str, entry, dest: Path) -> float:
        """Stream one file into `dest`, hashing each chunk as it arrives; returns the seconds spent on the
        check after the last byte (the digest and its comparison: the rest of verifying overlapped the
        download). Raises IntegrityError on a mismatch."""
        data = self.fetch(manifest, filename)
        chunks = (data,) if isinstance(data, bytes | bytearray) else data
        sha, size = hashlib.sha256(), 0
        with open(dest, "wb") as out:
            for chunk in chunks:
                sha.update(chunk)
                size += len(chunk)
                if size > entry.size:
                    break  # more than the manifest says: no use reading on
                out.write(chunk)
        checked = time.monotonic()
        digest = sha.hexdigest()
        if digest != entry.sha256 or size != entry.size:
            raise IntegrityError(f"{manifest.ref}/{filename}: the store returned {size} bytes with "
                                 f"SHA-256 {digest[:16]}..., the manifest says {entry.size} bytes, "
                                 f"{entry.sha256[:16]}...: not loaded; check the object store")
        return time.monotonic() - checked

    def _intact(self, path: Path, manifest: Manifest, verify: bool) -> bool:
        for filename, entry in manifest.files.items():
            file = path / filename
            try:
                if file.stat().st_size != entry.size:
                    return False
            except FileNotFoundError:
                return False
            if verify and hashlib.sha256(file.read_bytes()).hexdigest() != entry.sha256:
                return False
        return True

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())

    def _touch(self, key: str, path: Path, size: int) -> None:
        os.utime(path)  # the LRU order survives a restart through the directories' mtimes
        with self._lock:
            if key in self._entries and self._entries.size(key) == size:
                self._entries.touch(key)
            else:
                self._entries.add(key, size)

    def _evict(self, keep: str) -> None:
        """Drop versions (one-off ones first, least recent first) until under budget; never `keep`, a pinned
        one, nor one being fetched."""
        with self._lock:
            held: list[threading.Lock] = []  # locks of the victims: no fetch of theirs starts mid-removal

            def busy(key: str) -> bool:
                lock = self._locks.get(key)
                if key == keep or self.keep(key) or (lock is not None and not lock.acquire(blocking=False)):
                    return True
                if lock is not None:
                    held.append(lock)
                return False

            try:
                for key in self._entries.victims(keep=busy):
                    _remove(self.root / key, self._tmp)
                    self._entries.remove(key)
                    self._locks.pop(key, None)  # bounded by what is cached (a late fetch makes a new one)
                    self.stats["evictions"] += 1
            finally:
                for lock in held:
                    lock.release()
            usage = self._entries.usage()
        self.on_change(usage)

    def _load(self) -> None:
        """Index what a previous process left (oldest mtime first); drop unfinished downloads."""
        shutil.rmtree(self._tmp, ignore_errors=True)
        found = [p for p in self.root.glob("*/*/*") if p.is_dir() and not p.name.startswith(".")]
        for path in sorted(found, key=lambda p: p.stat().st_mtime):
            size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
            self._entries.add(path.relative_to(self.root).as_posix(), size)

    def _count(self, stat: str) -> None:
        with self._lock:
            self.stats[stat] += 1


def _entry_key(manifest: Manifest) -> str:
    check_name(manifest.tenant, "tenant")
    check_name(manifest.name, "adapter name")
    if not is_version(manifest.version):
        raise ModelNotFound(f"{manifest.version!r} is not a version id")
    return f"{manifest.tenant}/{manifest.name}/{manifest.version}"


def _remove(path: Path, tmp: Path) -> None:
    """Move aside, then delete: the directory vanishes at once, never half-deleted."""
    tmp.mkdir(parents=True, exist_ok=True)
    aside = tmp / f"evict-{uuid.uuid4().hex}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)
