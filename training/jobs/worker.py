"""A fine-tuning worker: claim the oldest waiting job (queued, or running with an expired lease), run it, repeat.

Any number of workers may share one bucket, on one host or on a Ray cluster (training/jobs/ray_workers.py):
the claim is a compare-and-swap on the job record, so each job runs on one worker at a time.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time

from common.errors import LoraplexError
from registry.adapter_registry import AdapterRegistry
from registry.base_spec import BaseModelSpec
from registry.files import FileStore
from registry.jobs import JobStore
from registry.noop_probe import default_probes
from registry.settings import RegistrySettings
from registry.store import ObjectStore
from training.jobs.runner import JobRunner

log = logging.getLogger(__name__)


def worker_id() -> str:
    """`host:pid:random`: the lease holder's name, unique per worker process."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def build_runner(settings: RegistrySettings, worker: str | None = None) -> JobRunner:
    """A runner over the registry of `settings` (publishing through the validation gate and no-op probe)."""
    if settings.base_model is None:
        raise SystemExit("a job worker needs the served base: set LORAPLEX_BASE_MODEL to its directory")
    store = ObjectStore(settings)
    base = BaseModelSpec.from_dir(settings.base_model)
    adapters = AdapterRegistry(store, settings, base, probes=default_probes(settings, base))
    return JobRunner(settings, JobStore(store, settings), FileStore(store, settings), adapters,
                     worker or worker_id())


def run_worker(settings: RegistrySettings | None = None, *, once: bool = False,
               stop: threading.Event | None = None) -> int:
    """Claim and run jobs until `stop` is set (or, with `once`, until no job waits). Returns jobs run."""
    settings = settings or RegistrySettings()
    runner = build_runner(settings)
    stop = stop or threading.Event()
    log.info("fine-tuning worker %s polling bucket %s", runner.worker, settings.s3_bucket)
    done = 0
    while not stop.is_set():
        try:
            job = runner.jobs.claim(runner.worker)
        except LoraplexError as e:  # S3 unreachable: wait and retry, never die
            log.warning("claiming a job failed: %s", e.message)
            job = None
        if job is None:
            if once:
                return done
            stop.wait(settings.job_poll_s)
            continue
        log.info("running job %s of %s (attempt %d)", job.id, job.tenant, job.attempts)
        started = time.monotonic()
        try:
            final = runner.run(job)
        except LoraplexError as e:  # the store failed mid-job: the lease runs out and another attempt resumes
            log.warning("job %s interrupted: %s", job.id, e.message)
            final = None
        except Exception as e:  # a bug: fail the job with what happened rather than retry it forever
            log.exception("job %s crashed", job.id)
            final = _fail_crashed(runner, job, e)
        log.info("job %s ended as %s in %.1fs", job.id, final.status if final else "stopped",
                 time.monotonic() - started)
        done += 1
    return done


def _fail_crashed(runner: JobRunner, job, exc: Exception):
    message = f"internal error in the worker ({type(exc).__name__}: {str(exc)[:300]}); create the job again"
    try:
        failed = runner.jobs.finish(job, "failed", worker=runner.worker,
                                    error={"code": "internal_error", "message": message, "param": None})
    except Exception:  # the lease is gone or S3 is down: the lease expiry handles the job
        return None
    runner.jobs.add_event(failed, f"The job failed: {message}", level="error")
    return failed
