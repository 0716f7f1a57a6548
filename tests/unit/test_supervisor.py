"""serving/supervisor.py: /ready learns of an engine's death at once, not at the watcher's next look."""

from __future__ import annotations

import subprocess
import sys

import pytest

from serving.settings import ServingSettings
from serving.supervisor import EngineSupervisor

pytestmark = pytest.mark.unit


def test_down_as_soon_as_the_engine_process_exits():
    sup = EngineSupervisor(ServingSettings(), residency=None)
    assert not sup.down  # nothing started yet: nothing known to be down
    sup.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not sup.down
        sup.proc.kill()
        sup.proc.wait(timeout=30)
        assert sup.down  # the watcher task is not even running
    finally:
        sup.proc.kill()
    sup.proc, sup.recovering = None, True
    assert sup.down
