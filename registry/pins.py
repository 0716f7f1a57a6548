"""Operators' pins: adapter versions that no residency tier may evict, kept in the registry bucket so that a
restarted (or another) gateway keeps them.

A pin names a tenant's adapter and a `ref`: an alias (e.g. `prod`, followed as it moves: the version it points
at is the one kept) or a version id. One small object per pin (`pins/<tenant>/<name>/<ref>.json`): pinning
and unpinning are single writes, with no read-modify-write to race.
"""

from __future__ import annotations

from pydantic import BaseModel

from common.names import NAME_RE, check_name
from registry import layout
from registry.manifest import is_version, utc_now
from registry.store import ObjectStore


class Pin(BaseModel):
    """One pin: `tenant`'s adapter `name` at `ref` (alias or version)."""

    tenant: str
    name: str
    ref: str
    created_at: str = ""

    @property
    def model(self) -> str:
        """The model name a tenant would send for it: `NAME@REF`."""
        return f"{self.name}@{self.ref}"


def check_ref(ref: str) -> None:
    """An alias name or a version id; anything else is refused before it becomes a key."""
    if not (is_version(ref) or NAME_RE.fullmatch(ref or "")):
        check_name(ref, "pin ref (an alias such as prod, or a version id)")


class PinRegistry:
    """The pins of every tenant in the registry bucket."""

    def __init__(self, store: ObjectStore):
        self.store = store

    def pin(self, tenant: str, name: str, ref: str) -> Pin:
        """Store the pin (idempotent: pinning twice keeps one)."""
        check_name(tenant, "tenant")
        check_name(name, "adapter name")
        check_ref(ref)
        pin = Pin(tenant=tenant, name=name, ref=ref, created_at=utc_now())
        self.store.put(layout.pin_key(tenant, name, ref), pin.model_dump_json().encode())
        return pin

    def unpin(self, tenant: str, name: str, ref: str) -> None:
        """Drop the pin; unpinning what is not pinned is not an error."""
        check_name(tenant, "tenant")
        check_name(name, "adapter name")
        check_ref(ref)
        self.store.delete(layout.pin_key(tenant, name, ref))

    def list(self, tenant: str | None = None) -> list[Pin]:
        """Every pin (of `tenant`), sorted by tenant, name, ref; read from the keys alone (one listing)."""
        if tenant is not None:
            check_name(tenant, "tenant")
        pins = []
        for key in self.store.list(layout.pins_prefix(tenant)):
            parts = key.removesuffix(".json").split("/")
            if len(parts) == 4 and parts[0] == "pins":
                pins.append(Pin(tenant=parts[1], name=parts[2], ref=parts[3]))
        return pins

