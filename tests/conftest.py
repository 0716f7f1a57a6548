"""Session-wide real components shared by every test that needs them.

Everything runs on free ports in temporary directories, so the suite also works while a `make up`
stack is running on the same host.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.harness import running_s3
from registry.seaweed import SeaweedServer

ROOT = Path(__file__).resolve().parents[1]

# Every tenant gets metrics series of its own in this process's gateways: the tests check series by tenant
# name, and a session makes far more tenants than the 20 busiest a gateway names by default (each in-process
# gateway's start sets the bound of the one label map they share). tests/e2e/test_metrics.py checks the bound.
os.environ.setdefault("LORAPLEX_METRICS_TENANTS", "100000")


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


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One real SeaweedFS (`weed mini`) for the whole session on free loopback ports, with generated
    credentials in os.environ."""
    with running_s3(tmp_path_factory.mktemp("seaweed"), key_prefix="lpxtest") as server:
        yield server
