"""Keeps the engine alive when the gateway owns it (`LORAPLEX_ENGINE_MANAGED=true`).

Every start is watched until the engine answers: one that fails (the process exits, or vLLM logs that
its start failed) is known at once, with the root cause from the engine's log and the log's path, and
/ready says so; after MAX_START_FAILURES failed starts in a row the supervisor stops trying (a broken
model or setting fails the same way every time). If a running engine dies (a crash, an OOM kill,
`kill -9`), in-flight requests fail promptly with a clear error, `/ready` turns 503, the engine is started
again, the adapters that were hot are loaded back, and `/ready` returns to 200 once a real generate succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path
from urllib.parse import urlparse

from common.errors import EngineUnavailable
from common.procs import stop_group
from serving.engine import start_engine, wait_engine_ready
from serving.engine_log import EngineLog
from serving.residency import AdapterResidency
from serving.settings import ServingSettings

log = logging.getLogger(__name__)
MAX_START_FAILURES = 3  # failed starts in a row before the supervisor gives up
START_TIMEOUT_S = 600.0  # a start that neither answers nor fails within this counts as failed


class EngineSupervisor:
    def __init__(self, settings: ServingSettings, residency: AdapterResidency):
        self.settings = settings
        self.residency = residency
        self.port = urlparse(settings.engine_url).port or 80
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.failure: str | None = None  # why the last start failed or the engine died; None once it answers
        self.gave_up = False
        self.recovering = False  # /ready stays 503 until the restarted engine has its hot adapters back
        self._log: EngineLog | None = None
        self._hot: list = []
        self._start_failures = 0
        self._task: asyncio.Task | None = None
        self._stopping = False

    @property
    def down(self) -> bool:
        """The engine has exited (even if the watcher has not seen it yet), failed to start or is being restarted."""
        return (self.recovering or self.failure is not None
                or (self.proc is not None and self.proc.poll() is not None))

    def ready_detail(self) -> dict:
        """/ready's body while `down`: what happened, with the engine's root cause where known."""
        if self.gave_up:
            return {"engine": f"{self.failure}; gave up after {MAX_START_FAILURES} failed starts: fix the cause "
                              "and restart the gateway", "engine_start_failed": True}
        if self.recovering:
            why = f" ({self.failure})" if self.failure else ""
            return {"engine": f"the engine is restarting after a crash{why}; hot adapters are being reloaded"}
        if self.failure:
            return {"engine": f"{self.failure}; trying again", "engine_start_failed": True}
        return {"engine": "the engine has exited; it is being restarted"}

    async def start(self) -> None:
        """Start the engine and watch it; returns at once (readiness is /ready's business)."""
        self._spawn()
        self._task = asyncio.create_task(self._watch())

    def _spawn(self) -> None:
        self._log = EngineLog.at_end(self.settings.engine_log or Path("engine.log"))
        self.proc = start_engine(self.settings, self.port, self._log.path)
        if self.settings.engine_pid_file:
            self.settings.engine_pid_file.write_text(str(self.proc.pid))
        log.info("engine started", extra={"fields": {"pid": self.proc.pid, "port": self.port}})

    async def _watch(self) -> None:
        while not self._stopping:
            try:
                await asyncio.to_thread(wait_engine_ready, self.settings.engine_url, START_TIMEOUT_S, self.proc,
                                        self._log)
            except EngineUnavailable as e:
                if not await self._start_failed(e.message):
                    return
                continue
            self.failure, self._start_failures = None, 0
            if self.recovering:
                await self.residency.reload(self._hot)
                self._hot, self.recovering = [], False
            await self._until_exit()
            if self._stopping:
                return
            code = self.proc.returncode
            self.failure = self._log.failure(code, starting=False)
            self.recovering = True
            log.error("engine exited", extra={"fields": {"code": code, "restarts": self.restarts,
                                                         "cause": self.failure}})
            self._hot = self.residency.take_hot()
            await self._restart()

    async def _until_exit(self) -> None:
        while not self._stopping and self.proc.poll() is None:
            await asyncio.sleep(0.5)

    async def _start_failed(self, why: str) -> bool:
        """Record a failed start; restart after a back-off, or give up. Returns whether it restarted."""
        self.failure = why
        self._start_failures += 1
        if self._start_failures >= MAX_START_FAILURES:
            self.gave_up = True
            log.error("engine start failed; giving up", extra={"fields": {"cause": why,
                                                                          "attempts": self._start_failures}})
            await asyncio.to_thread(stop_group, self.proc.pid, 5)
            return False
        log.error("engine start failed; trying again", extra={"fields": {"cause": why,
                                                                         "attempts": self._start_failures}})
        await self._restart()
        return True

    async def _restart(self) -> None:
        await asyncio.to_thread(stop_group, self.proc.pid, 5)  # its workers, if any survived
        await asyncio.sleep(min(30, 2 ** min(self.restarts, 5)))  # back off if it keeps dying
        self.restarts += 1
        if not self._stopping:
            self._spawn()

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
        if self.proc is not None:
            await asyncio.to_thread(stop_group, self.proc.pid, 20)
