"""The one pattern every user-supplied name must match before it goes anywhere near a key or a path."""

from __future__ import annotations

import re

from common.errors import InvalidName

# ASCII only (no look-alike unicode), starts with a letter or digit, no dots or slashes (no `..`, no paths).
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
NAME_RULE = "lowercase ASCII letters, digits, '-' and '_', starting with a letter or digit, at most 63 characters"


def check_name(value: str, what: str = "name") -> str:
    """Return `value` if it is a safe name, else raise InvalidName saying what is allowed."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        shown = value if isinstance(value, str) and len(value) <= 80 else repr(value)[:80]
        raise InvalidName(f"invalid {what} {shown!r}: use {NAME_RULE}", param=what)
    return value
