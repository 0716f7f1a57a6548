"""Crash-safe build outputs: build in a temporary directory, rename into place, then stamp.

An artifact counts as complete only when its directory and its stamp (a small JSON file written
last) both exist and the stamp matches the current recipe, so an interrupted build is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_stamp(path: Path) -> dict | None:
    """The stamp at `path`, or None if it is missing or unreadable (treated as not built)."""
    try:
        stamp = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def write_stamp(path: Path, stamp: dict) -> None:
    """Write `stamp` as JSON atomically (a reader sees the old file or the new one, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


@contextmanager
def staged_dir(final: Path, scratch: Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `final` when the block succeeds.

    Args:
        final: where the finished directory must end up (an existing one is removed first).
        scratch: parent of the temporary directory; on the same filesystem as `final` so the
            rename is atomic.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}-", dir=scratch))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; the finished artifact is an ordinary directory
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def discard(*paths: Path) -> None:
    """Remove files or directories left by an incomplete or outdated build (missing ones are fine)."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
