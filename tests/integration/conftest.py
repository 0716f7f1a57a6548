"""Fixtures on the session's real SeaweedFS (tests/conftest.py): one fresh bucket per test."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from registry.seaweed import SeaweedServer


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
    from tests.helpers.tiny_artifacts import write_tiny_base

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
