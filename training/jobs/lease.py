"""The lease a worker holds on its job: renewed in a thread, carrying progress; lost means stop now.

A renewal is a compare-and-swap on the job record (registry/jobs.py). It fails with LeaseLost when the tenant
cancelled the job or another worker took it over (our lease had run out): the training loop sees `stopped`
at its next step and stops, publishing nothing.
"""

from __future__ import annotations

import logging
import threading
import time

from common.errors import LoraplexError
from registry.job_spec import JobRecord, LeaseLost
from registry.jobs import JobStore

log = logging.getLogger(__name__)
CHECK_EVERY_S = 2.0  # cancel is seen within about this (each check is one conditional write)


class LeaseKeeper:
    """Renews `worker`'s lease on `job` every min(lease/3, CHECK_EVERY_S) seconds until `close()`.

    Args:
        jobs: the job store.
        job: the claimed job (status running, leased to `worker`).
        worker: this worker's id.
    """

    def __init__(self, jobs: JobStore, job: JobRecord, worker: str):
        self.jobs, self.job, self.worker = jobs, job, worker
        self.every = min(jobs.settings.job_lease_s / 3, CHECK_EVERY_S)
        self.stopped: str | None = None  # why the job must stop (cancelled, taken over)
        self.progress: dict = {}
        self._first: tuple[float, int] | None = None
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job.id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=30)

    def report(self, step: int, total: int, tokens: int | None) -> None:
        """The training loop's progress; the next renewal stores it with an estimated finish."""
        now = time.time()
        if self._first is None or step < self._first[1]:
            self._first = (now, step)
        started, first_step = self._first
        eta = None
        if step > first_step and total:
            eta = int(now + (total - step) * (now - started) / (step - first_step))
        self.progress = {"step": step, "total_steps": total, "estimated_finish": eta,
                         "trained_tokens": tokens}

    def renew(self) -> JobRecord | None:
        """One renewal now; sets `stopped` if the lease is lost."""
        try:
            self.job = self.jobs.renew(self.job, self.worker, **self.progress)
            return self.job
        except LeaseLost as e:
            self.stopped = self.stopped or str(e)
        except LoraplexError as e:  # S3 down for a moment: retried at the next tick, the lease outlasts a few
            log.warning("lease renewal of %s failed: %s", self.job.id, e.message)
        return None

    def _run(self) -> None:
        while not self._closing.wait(self.every) and self.stopped is None:
            self.renew()
