"""common/procs.py: free ports, /proc parsing, stopping a process group (real processes, no servers)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from common.procs import free_port, pid_alive, port_free, port_open, proc_stat, start_ticks, stop_group
from tests.waiting import wait_until

pytestmark = pytest.mark.unit


def test_free_port_is_bindable_and_a_listening_port_is_not_free():
    port = free_port()
    assert port_free(port) and not port_open(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert port_open(port) and not port_free(port)


def test_proc_stat_reads_a_command_name_with_spaces_and_parentheses(tmp_path):
    odd = tmp_path / "a b) c"
    odd.symlink_to(sys.executable)
    proc = subprocess.Popen([str(odd), "-c", "import time; time.sleep(30)"])
    try:
        fields = proc_stat(proc.pid)
        assert fields is not None and fields[0] in "RSD" and int(fields[1]) == os.getpid()  # state, parent
        assert start_ticks(proc.pid) == fields[19] and start_ticks(proc.pid) != start_ticks(os.getpid())
    finally:
        proc.kill()
        proc.wait()
    assert proc_stat(proc.pid) is None and start_ticks(proc.pid) is None


def test_a_zombie_is_not_alive_and_stop_group_reaps_it():
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    wait_until(lambda: (proc_stat(proc.pid) or ["Z"])[0] == "Z", interval=0.01, what="the child exited")
    assert not pid_alive(proc.pid) and start_ticks(proc.pid) is None
    stop_group(proc.pid, timeout=2)
    assert proc_stat(proc.pid) is None


def test_stop_group_leaves_no_zombie_leader():
    """A zombie leader keeps its process group alive for killpg(0): watchdogs waiting for the group to go
    would wait forever. stop_group reaps its child whenever it died (also after the first look)."""
    for _ in range(5):  # the leader may die before or after stop_group's first look
        proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
        stop_group(proc.pid, 5)
        assert proc_stat(proc.pid) is None  # reaped: no /proc entry, not even a zombie
