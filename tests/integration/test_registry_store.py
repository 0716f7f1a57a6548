"""ObjectStore on a real SeaweedFS: conditional writes, checksums, error mapping, S3 down."""

from __future__ import annotations

import base64
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from common.errors import IntegrityError, StorageUnavailable
from common.procs import free_port
from registry.errors import KeyMissing, PreconditionFailed
from registry.seaweed import SeaweedServer
from registry.settings import RegistrySettings
from registry.store import ObjectStore

pytestmark = pytest.mark.integration


def test_round_trip(store):
    etag = store.put("a/b.json", b"hello")
    assert store.get("a/b.json") == (b"hello", etag)
    assert store.head("a/b.json").size == 5
    store.put("a/c.json", b"x")
    assert store.list("a/") == ["a/b.json", "a/c.json"]
    store.delete("a/b.json")
    store.delete("a/b.json")  # deleting what is gone is fine
    assert store.list("a/") == ["a/c.json"]
    store.ping()


def test_missing_key(store):
    with pytest.raises(KeyMissing):
        store.get("nope")
    with pytest.raises(KeyMissing):
        store.head("nope")


def test_conditional_create_and_swap(store):
    etag = store.put("k", b"one", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("k", b"two", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("k", b"two", if_match='"0123456789abcdef0123456789abcdef"')
    new = store.put("k", b"two", if_match=etag)
    assert store.get("k") == (b"two", new)
    with pytest.raises(PreconditionFailed):  # If-Match on a missing key (SeaweedFS: 412, AWS: 404)
        store.put("other", b"x", if_match=etag)


def test_concurrent_conditional_create_has_one_winner(store):
    def create(i: int) -> bool:
        try:
            store.put("race", str(i).encode(), if_none_match=True)
            return True
        except PreconditionFailed:
            return False

    with ThreadPoolExecutor(32) as pool:
        assert sum(pool.map(create, range(32))) == 1


def test_the_store_checks_our_sha256(store):
    wrong = base64.b64encode(b"\0" * 32).decode()
    with pytest.raises(IntegrityError, match="SHA-256"):
        store._call("k", store.client.put_object, Bucket=store.bucket, Key="k", Body=b"data", ChecksumSHA256=wrong)


def test_missing_bucket_is_storage_unavailable(registry_settings):
    store = ObjectStore(registry_settings.model_copy(update={"s3_bucket": "no-such-bucket"}))
    for call in (lambda: store.get("k"), store.ping, lambda: store.put("k", b"v")):
        with pytest.raises(StorageUnavailable, match="does not exist"):
            call()


def test_wrong_credentials_are_storage_unavailable(registry_settings, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(StorageUnavailable, match="credentials"):
        ObjectStore(registry_settings).ping()


def test_no_credentials_is_storage_unavailable(registry_settings, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageUnavailable, match="no AWS credentials"):
        ObjectStore(registry_settings).ping()


def test_closed_port_fails_fast(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "any")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "any")
    store = ObjectStore(RegistrySettings(s3_endpoint=f"http://127.0.0.1:{free_port()}", s3_bucket="abc"))
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as info:
        store.get("k")
    # A refused connection fails each of the 3 attempts at once, with botocore's jittered backoff (under
    # 0.05 + 0.1 s) between them: ~0.2 s. 5 s is far from that on a loaded host, and below the hang a
    # connect timeout (2 s per attempt) would cause.
    assert time.monotonic() - started < 5
    assert info.value.retry_after and "unreachable" in info.value.message


def test_a_second_server_runs_beside_the_first_then_stops(seaweed, tmp_path):
    """Two instances at once (a `make up` stack beside the tests); a stopped one fails fast."""
    import os

    second = SeaweedServer().start(tmp_path / "second", access_key=os.environ["AWS_ACCESS_KEY_ID"],
                                   secret_key=os.environ["AWS_SECRET_ACCESS_KEY"])
    try:
        second.wait_ready(60)
        assert set(second.ports.values()).isdisjoint(seaweed.ports.values())
        store = ObjectStore(RegistrySettings(s3_endpoint=second.endpoint, s3_bucket="second"))
        store.ensure_bucket()
        store.ensure_bucket()  # idempotent
        store.put("k", b"v")
        assert store.get("k")[0] == b"v"
    finally:
        pid = second.pid
        second.stop()
    assert second.pid is None and not os.path.exists(f"/proc/{pid}")
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        store.get("k")
    assert time.monotonic() - started < 5  # refused at once, as in test_closed_port_fails_fast: ~0.2 s


def test_a_busy_port_is_refused_before_start(seaweed, tmp_path):
    with pytest.raises(OSError, match="in use"):
        SeaweedServer().start(tmp_path, access_key="a", secret_key="b", s3_port=seaweed.ports["s3"])


def test_a_write_that_changes_a_resolution_or_a_key_changes_the_generation(store):
    """What gateways renew their remembered answers by (serving/renewals.py): a new ETag after each write of an
    alias, a manifest, a tenant record or a key; none after a version's file (its manifest comes last)."""
    assert store.generation() is None
    store.put("adapters/acme/chat/versions/0123456789abcdef/adapter_config.json", b"{}")
    assert store.generation() is None
    seen = []
    for key in ("adapters/acme/chat/versions/0123456789abcdef/manifest.json", "adapters/acme/chat/aliases/prod.json",
                "models/acme/m/aliases/prod.json", "tenants/acme.json", "keys/" + "0" * 64 + ".json"):
        store.put(key, b"{}")
        seen.append(store.generation())
        store.delete(key)
        seen.append(store.generation())
    assert None not in seen and len(set(seen)) == len(seen)
    store.put("files/acme/x.jsonl", b"{}")  # a training file: read by no resolution
    assert store.generation() == seen[-1]
