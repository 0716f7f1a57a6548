"""Keeps the engine alive when the gateway owns it (`LORAPLEX_ENGINE_MANAGED=true`).

If the engine dies (a crash, an OOM kill, `kill -9`), in-flight requests fail promptly with a clear
error, `/ready` turns 503, the engine is started again, the adapters that were hot are loaded back,
and `/ready` returns to 200 once a real generate succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path
from urllib.parse import urlparse

from common.procs import stop_group
from serving.engine import start_engine, wait_engine_ready
from serving.residency import AdapterResidency
from serving.settings import ServingSettings

log = logging.getLogger(__name__)


class EngineSupervisor:
    def __init__(self, settings: ServingSettings, residency: AdapterResidency):
        self.settings = settings
        self.residency = residency
        self.port = urlparse(settings.engine_url).port or 80
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.recovering = False  # /ready stays 503 until the restarted engine has its hot adapters back

    @property
    def down(self) -> bool:
        """The engine has exited (even if the watcher has not seen it yet) or is being restarted."""
        return self.recovering or (self.proc is not None and self.proc.poll() is not None)

    async def start(self) -> None:
        """Start the engine and watch it; returns at once (readiness is /ready's business)."""
        self._spawn()
        self._task = asyncio.create_task(self._watch())

    def _spawn(self) -> None:
        log_path = self.settings.engine_log or Path("engine.log")
        self.proc = start_engine(self.settings, self.port, log_path)
        if self.settings.engine_pid_file:
            self.settings.engine_pid_file.write_text(str(self.proc.pid))
        log.info("engine started", extra={"fields": {"pid": self.proc.pid, "port": self.port}})

    async def _watch(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.5)
            if self.proc is None or self.proc.poll() is None:
                continue
            code = self.proc.returncode
            self.recovering = True
            log.error("engine exited", extra={"fields": {"code": code, "restarts": self.restarts}})
            hot = self.residency.take_hot()
            await asyncio.to_thread(stop_group, self.proc.pid, 5)  # its workers, if any survived
            await asyncio.sleep(min(30, 2 ** min(self.restarts, 5)))  # back off if it keeps dying
            self.restarts += 1
            self._spawn()
            try:
                await asyncio.to_thread(wait_engine_ready, self.settings.engine_url, 600, self.proc)
            except Exception:
                log.exception("engine restart failed; trying again")
                continue
            await self.residency.reload(hot)
            self.recovering = False

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
        if self.proc is not None:
            await asyncio.to_thread(stop_group, self.proc.pid, 20)
