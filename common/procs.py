"""Process and port helpers: the one place that picks free ports, reads /proc and stops process groups.

Used by the stack launcher, SeaweedFS (registry/seaweed.py), the engines (serving/), the benchmarks and
the test fixtures.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether `port` on `host` can be bound now (stricter than `not port_open`: TIME_WAIT counts too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on `port` of `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def spawn(cmd: list[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """Start `cmd` in its own session (so it survives its parent and can be stopped as a group)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab")
    try:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True,
        )
    finally:
        out.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0): look at its state.
    fields = proc_stat(pid)
    return fields is None or fields[0] != "Z"


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/`pid`/stat after the command name (state first; see proc(5), field 3 on), or
    None when it cannot be read. The name is in parentheses and may hold spaces: split after the last ')'."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_ticks(pid: int) -> str | None:
    """When a live process started (clock ticks since boot, proc(5) field 22): with the pid, an identity
    that survives pid reuse. None for a zombie or a process that is gone."""
    fields = proc_stat(pid)
    return None if fields is None or fields[0] == "Z" or len(fields) < 20 else fields[19]


def stop_group(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM the process group led by `pid`, then SIGKILL whatever is left after `timeout`."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not pid_alive(pid) and not _group_alive(pid):
                _reap(pid)  # it may have died after the first look: a zombie leader keeps its group alive
                return
            time.sleep(0.2)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Members may be zombies waiting for a parent that is gone; count only live ones.
    for entry in Path("/proc").glob("[0-9]*"):
        fields = proc_stat(int(entry.name))
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
