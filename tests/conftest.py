"""Session-wide real components shared by every test that needs them.

Everything runs on free ports in temporary directories, so the suite also works while a `make up`
stack is running on the same host.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.seaweed import SeaweedServer

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items):
    """Mark tests by folder (unit / integration / e2e), as the markers in pyproject describe."""
    for item in items:
        for kind in ("unit", "integration", "e2e"):
            if f"{os.sep}tests{os.sep}{kind}{os.sep}" in str(item.fspath):
                item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(scope="session")
def artifacts_var() -> Path:
    """Where the demo model and adapters are cached: var/ of the checkout (built once, atomically)."""
    return Path(os.environ.get("LORAPLEX_TEST_VAR", ROOT / "var"))


@pytest.fixture(scope="session")
def demo(artifacts_var):
    from training.demo import build_demo

    return build_demo(artifacts_var)


AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One real SeaweedFS for the whole session: a SeaweedFS (`weed mini`) on free loopback ports, with generated credentials in os.environ."""
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
