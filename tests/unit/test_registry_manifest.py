"""Version ids are derived from content: same bytes, same version."""

from __future__ import annotations

import re

import pytest

from common.peft_format import CONFIG_FILE, WEIGHTS_FILE
from registry.manifest import content_digest, file_entries, is_version, utc_now, version_of

pytestmark = pytest.mark.unit


def test_same_bytes_same_version_in_any_order():
    a = {CONFIG_FILE: b"{}", WEIGHTS_FILE: b"weights"}
    b = dict(reversed(list(a.items())))
    assert version_of(content_digest(file_entries(a))) == version_of(content_digest(file_entries(b)))


def test_one_changed_byte_changes_the_version():
    a = {CONFIG_FILE: b"{}", WEIGHTS_FILE: b"weights"}
    b = {**a, WEIGHTS_FILE: b"weightz"}
    assert content_digest(file_entries(a)) != content_digest(file_entries(b))


def test_a_file_name_is_part_of_the_identity():
    # the same bytes under other names are other content
    assert content_digest(file_entries({"a": b"x", "b": b"y"})) != content_digest(file_entries({"a": b"y", "b": b"x"}))


def test_version_shape():
    version = version_of(content_digest(file_entries({"a": b"x"})))
    assert is_version(version) and len(version) == 16
    assert not is_version("prod") and not is_version("0123456789ABCDEF") and not is_version(None)


def test_utc_now_is_iso_utc_and_sorts_as_text():
    first, second = utc_now(), utc_now()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first)
    assert first <= second
