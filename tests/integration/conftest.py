"""Fixtures on a real SeaweedFS: one server per test session, one fresh bucket per test.

`seaweed` is self-contained (it imports only registry.seaweed) so it can move to tests/conftest.py
and be shared with the e2e tests. Credentials are generated per session and exported through
os.environ, where boto3's default chain (and any child process) finds them; the old values are
restored at the end.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.seaweed import SeaweedServer

AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A SeaweedFS (`weed mini`) on free loopback ports, with generated credentials in os.environ."""
    saved = {name: os.environ.get(name) for name in AWS_ENV}
    access_key, secret_key = f"lpxtest{secrets.token_hex(6)}", secrets.token_urlsafe(24)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(name, None)
    os.environ.update(AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    server = SeaweedServer()
    try:
        server.start(tmp_path_factory.mktemp("seaweed"), access_key=access_key, secret_key=secret_key)
        server.wait_ready(timeout=60)
        yield server
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def bucket(seaweed: SeaweedServer) -> str:
    """A fresh, empty bucket for one test."""
    import boto3
    from botocore.config import Config

    name = f"test-{uuid.uuid4().hex[:16]}"
    client = boto3.client("s3", endpoint_url=seaweed.endpoint, region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}))
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama-like base dir (config.json + model.safetensors) for base-dependent validation."""
    from registry.testing import write_tiny_base

    return write_tiny_base(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture
def registry_settings(seaweed: SeaweedServer, bucket: str, tiny_base: Path, tmp_path: Path):
    """RegistrySettings pointing at this test's bucket, cache dir and the tiny base."""
    from registry.settings import RegistrySettings

    return RegistrySettings(s3_endpoint=seaweed.endpoint, s3_bucket=bucket, cache_dir=tmp_path / "cache",
                            base_model=tiny_base, cache_max_bytes=10 * 1024**2)


@pytest.fixture
def store(registry_settings):
    """An ObjectStore on this test's bucket."""
    from registry.store import ObjectStore

    return ObjectStore(registry_settings)
