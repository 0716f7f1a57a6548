"""SeaweedServer's command line and port choice (the running server is tested in tests/integration)."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.seaweed import GRPC_OFFSET, SeaweedServer, free_port_pair

pytestmark = pytest.mark.unit


def test_free_port_pair_skips_taken_and_busy_ports():
    taken: set[int] = set()
    ports = [free_port_pair(taken) for _ in range(5)]
    assert len(set(ports)) == 5 and all(p + GRPC_OFFSET in taken for p in ports)


def test_every_port_is_set_on_the_command_line(tmp_path):
    server = SeaweedServer(weed="/bin/weed")
    server.ports = {"master": 21000, "volume": 21001, "filer": 21002, "s3": 21003, "admin": 21004}
    args = server._command(Path(tmp_path))
    for component, port in server.ports.items():
        assert f"-{component}.port={port}" in args and f"-{component}.port.grpc={port + GRPC_OFFSET}" in args
    for flag in ("-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false", "-admin.ui=false",
                 "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",
                 f"-logdir={tmp_path / 'logs'}", f"-s3.localSocket={tmp_path / 's3.sock'}"):
        assert flag in args
    assert server.endpoint == "http://127.0.0.1:21003"
