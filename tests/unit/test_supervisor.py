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


def test_a_start_that_fails_is_reported_with_its_cause_and_retried_then_given_up(tmp_path, monkeypatch):
    """The supervisor watches the first start too: /ready names the engine's root cause at once, and after
    MAX_START_FAILURES failed starts in a row it stops trying."""
    import asyncio

    from serving import supervisor as mod
    from tests.waiting import until

    def broken_engine(settings, port, log, lora=True):
        with open(log, "ab") as out:
            return subprocess.Popen([sys.executable, "-c", "raise ValueError('the config claims 4 layers')"],
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    monkeypatch.setattr(mod, "start_engine", broken_engine)
    monkeypatch.setattr(mod, "MAX_START_FAILURES", 2)
    log = tmp_path / "engine.log"
    sup = EngineSupervisor(ServingSettings(engine_log=log, engine_url="http://127.0.0.1:9"), residency=None)

    async def scenario():
        await sup.start()
        await until(lambda: sup.failure is not None, timeout=60, what="the failed start was noticed")
        first = sup.ready_detail()
        await until(lambda: sup.gave_up, timeout=60, what="the supervisor gave up")
        await sup.stop()
        return first

    first = asyncio.run(scenario())
    assert sup.down and first["engine_start_failed"] is True
    assert "ValueError: the config claims 4 layers" in first["engine"] and str(log) in first["engine"]
    assert "gave up after 2 failed starts" in sup.ready_detail()["engine"] and sup.restarts == 1
