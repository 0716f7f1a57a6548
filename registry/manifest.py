"""The manifest: the one object that makes an adapter version exist.

A version's id is derived from its bytes, so uploading the same files twice names the same version.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

VERSION_RE = re.compile(r"^[0-9a-f]{16}$")


class FileEntry(BaseModel):
    """One file of a version: what the cache re-checks before the engine sees it."""

    sha256: str
    size: int


class ModelShape(BaseModel):
    """What a model is, from its config.json."""

    model_type: str | None = None
    architecture: str | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    vocab_size: int | None = None


class BaseFingerprint(ModelShape):
    """Which base model an adapter was validated against: its shape and a digest of its weights."""

    weights_sha256: str = Field(description="SHA-256 over the base's safetensors headers and sampled bytes.")


class Manifest(BaseModel):
    """An immutable adapter version, as stored in `.../versions/<version>/manifest.json`."""

    tenant: str
    name: str
    version: str = Field(description="First 16 hex chars of `sha256`.")
    sha256: str = Field(description="SHA-256 over the sorted 'filename:sha256' lines of the files.")
    files: dict[str, FileEntry]
    size_bytes: int
    rank: int
    alpha: float
    target_modules: list[str]
    base_model: BaseFingerprint | None = Field(None, description="The served base the gate validated the "
                                               "version against; the gateway serves it on this base only.")
    base_check: Literal["fingerprint", "shapes"] | None = Field(
        None, description="How the base was checked. fingerprint: the adapter carried the fingerprint of the base "
                          "it was trained on, and it is `base_model`; shapes: it carried none (trained elsewhere), "
                          "so the base was not fingerprinted: module names, shapes and the no-op probe only; "
                          "null: no base was configured.")
    created_at: str = Field(description="ISO-8601 UTC time of the first upload of these bytes.")
    uploader: str
    metadata: dict = Field(default_factory=dict, description="Optional training metadata, free-form.")
    health: dict | None = Field(None, description="Singular-value spectrum of the updates, computed at upload "
                                "(registry/health.py): effective rank, near-zero share, per module.")

    @property
    def ref(self) -> str:
        """`NAME@VERSION`, the unambiguous model name of this version."""
        return f"{self.name}@{self.version}"


def file_entries(files: dict[str, bytes]) -> dict[str, FileEntry]:
    """Return the SHA-256 and size of every file."""
    return {fn: FileEntry(sha256=hashlib.sha256(data).hexdigest(), size=len(data)) for fn, data in files.items()}


def content_digest(entries: dict[str, FileEntry]) -> str:
    """SHA-256 over the sorted `filename:sha256` lines: the identity of a set of files."""
    lines = "".join(f"{fn}:{entries[fn].sha256}\n" for fn in sorted(entries))
    return hashlib.sha256(lines.encode()).hexdigest()


def version_of(digest: str) -> str:
    """The version id for a content digest: its first 16 hex characters (64 bits)."""
    return digest[:16]


def is_version(value: str) -> bool:
    """True if `value` has the shape of a version id (aliases may never look like one)."""
    return isinstance(value, str) and VERSION_RE.fullmatch(value) is not None


def utc_now() -> str:
    """The current time as ISO-8601 UTC with a `Z`, to the millisecond (sorts as text)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def manifest_copy(model: type[BaseModel], doc: object, tenant: str, name: str, version: str | None = None):
    """A manifest copied into another object (an alias, the newest-version index) as `model`, or None when it is
    unreadable or names another tenant, name or (given `version`) version: a copy moved to another prefix never
    answers there, the manifest object itself decides."""
    try:
        manifest = model.model_validate(doc)
    except ValueError:
        return None
    if (manifest.tenant, manifest.name) != (tenant, name) or version not in (None, manifest.version):
        return None
    return manifest
