"""Fine-tuning jobs in the registry bucket: records changed only by compare-and-swap, events, checkpoints, leases.

Layout (docs/fine-tuning.md):
    jobs/<tenant>/<job_id>/job.json                      the record; every change is a conditional write on its ETag
    jobs/<tenant>/<job_id>/events/<event_id>.json        one object per event (ids sort by time)
    jobs/<tenant>/<job_id>/checkpoints/<step>.json       a checkpoint's metrics, written after its files
    jobs/<tenant>/<job_id>/checkpoints/<step>/<file>     the Trainer's checkpoint files (to resume from)
    jobs-active/<tenant>/<job_id>                        index of jobs not yet finished: what workers scan
The gateway writes records and reads everything; workers (training/jobs/) claim, renew and finish jobs.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable

from common.names import check_name
from registry.errors import KeyMissing, PreconditionFailed
from registry.job_spec import (
    CANCELLED,
    FAILED,
    RUNNING,
    TERMINAL,
    JobLimitExceeded,
    JobNotFound,
    JobRecord,
    JobStateError,
    LeaseLost,
    check_transition,
    claim_action,
    is_id,
    new_id,
)
from registry.settings import RegistrySettings
from registry.store import ObjectStore

JOB_PREFIX, EVENT_PREFIX, CHECKPOINT_PREFIX = "ftjob-", "ftevent-", "ftckpt-"
ACTIVE = "jobs-active/"
CAS_ROUNDS = 16


def _page(ids: list[str], after: str | None, limit: int) -> tuple[list[str], bool]:
    """Newest first: the ids older than `after` (all if None), at most `limit`, and whether more remain."""
    ordered = sorted(ids, reverse=True)
    if after:
        ordered = [i for i in ordered if i < after]
    return ordered[:limit], len(ordered) > limit


class JobStore:
    """Every tenant's fine-tuning jobs.

    Args:
        store: the registry bucket.
        settings: lease length, attempts, per-tenant limit.
    """

    def __init__(self, store: ObjectStore, settings: RegistrySettings):
        self.store = store
        self.settings = settings

    # -- keys
    @staticmethod
    def job_prefix(tenant: str, job_id: str) -> str:
        return f"jobs/{tenant}/{job_id}/"

    def _job_key(self, tenant: str, job_id: str) -> str:
        return self.job_prefix(tenant, job_id) + "job.json"

    # -- records
    def create(self, job: JobRecord) -> JobRecord:
        """Store a new job (conditional create) and index it as active.

        Raises:
            JobLimitExceeded: the tenant has LORAPLEX_MAX_ACTIVE_JOBS_PER_TENANT jobs queued or running.
        """
        check_name(job.tenant, "tenant")
        limit = self.settings.max_active_jobs_per_tenant
        active = self.store.list(f"{ACTIVE}{job.tenant}/")
        if limit and len(active) >= limit:
            raise JobLimitExceeded(f"{len(active)} fine-tuning jobs are queued or running, the limit is {limit} per "
                                   "tenant (LORAPLEX_MAX_ACTIVE_JOBS_PER_TENANT): wait for one to finish or cancel "
                                   "one", retry_after=30)
        self.store.put(self._job_key(job.tenant, job.id), job.model_dump_json().encode(), if_none_match=True)
        self.store.put(f"{ACTIVE}{job.tenant}/{job.id}", b"{}")
        return job

    def get(self, tenant: str, job_id: str) -> JobRecord:
        return self._read(tenant, job_id)[0]

    def _read(self, tenant: str, job_id: str) -> tuple[JobRecord, str]:
        check_name(tenant, "tenant")
        missing = JobNotFound(f"fine-tuning job {str(job_id)[:60]!r} not found: list your jobs with GET "
                              "/v1/fine_tuning/jobs", param="fine_tuning_job_id")
        if not is_id(job_id, JOB_PREFIX):
            raise missing
        try:
            raw, etag = self.store.get(self._job_key(tenant, job_id))
        except KeyMissing:
            raise missing from None
        job = JobRecord.model_validate_json(raw)
        if job.tenant != tenant or job.id != job_id:  # a record copied elsewhere never leaks
            raise missing
        return job, etag

    def list(self, tenant: str, after: str | None = None, limit: int = 20) -> tuple[list[JobRecord], bool]:
        """A page of `tenant`'s jobs, newest first (ids sort by creation), and whether more remain."""
        check_name(tenant, "tenant")
        ids = {k.split("/")[2] for k in self.store.list(f"jobs/{tenant}/") if k.endswith("/job.json")}
        page, more = _page([i for i in ids if is_id(i, JOB_PREFIX)], after, limit)
        jobs = []
        for job_id in page:
            try:
                jobs.append(self.get(tenant, job_id))
            except JobNotFound:
                continue
        return jobs, more

    def update(self, tenant: str, job_id: str, change: Callable[[JobRecord], JobRecord]) -> JobRecord:
        """Apply `change` to the current record and write it only if nobody wrote in between (compare-and-swap),
        re-reading and re-applying after a lost round. `change` may raise to refuse (nothing is written)."""
        for round_ in range(CAS_ROUNDS):
            job, etag = self._read(tenant, job_id)
            new = change(job.model_copy(deep=True))
            if new.status != job.status:
                check_transition(job, new.status)
            try:
                self.store.put(self._job_key(tenant, job_id), new.model_dump_json().encode(), if_match=etag)
            except PreconditionFailed:
                time.sleep(random.uniform(0, 0.05 * (round_ + 1)))  # jittered: each round has one winner
                continue
            if new.status in TERMINAL and job.status not in TERMINAL:
                self.store.delete(f"{ACTIVE}{tenant}/{job_id}")
            return new
        raise JobStateError(f"job {job_id} kept changing under {CAS_ROUNDS} updates: retry", param="status")

    def finish(self, job: JobRecord, status: str, *, worker: str | None = None, error: dict | None = None,
               **fields) -> JobRecord:
        """Move `job` to a terminal status (only as its lease holder when `worker` is given)."""
        def change(current: JobRecord) -> JobRecord:
            if worker is not None and (current.status != RUNNING or current.lease_worker != worker):
                raise LeaseLost(f"job {current.id} is {current.status}, held by {current.lease_worker}")
            return current.model_copy(update={"status": status, "error": error, "finished_at": int(time.time()),
                                              "estimated_finish": None, "lease_worker": None,
                                              "lease_expires": None, **fields})
        return self.update(job.tenant, job.id, change)

    def cancel(self, tenant: str, job_id: str) -> JobRecord:
        """Cancel a job that has not finished: at once in the record; its worker sees it at its next step and
        stops without publishing. A job already publishing its model can no longer be cancelled."""
        def change(job: JobRecord) -> JobRecord:
            if job.status in TERMINAL:
                raise JobStateError(f"job {job_id} already {job.status}: nothing to cancel", param="fine_tuning_job_id")
            if job.publishing:
                raise JobStateError(f"job {job_id} finished training and is publishing {job.fine_tuned_model}: it "
                                    "can no longer be cancelled; delete the model's version instead",
                                    param="fine_tuning_job_id")
            return job.model_copy(update={"status": CANCELLED, "finished_at": int(time.time()),
                                          "estimated_finish": None})
        job = self.update(tenant, job_id, change)
        self.add_event(job, "Job cancelled at the user's request")
        return job

    # -- workers
    def claim(self, worker: str, now: float | None = None) -> JobRecord | None:
        """Take the oldest job that waits (queued, or running with an expired lease) for `worker`, or None.

        A job that lost `job_max_attempts` workers is failed here with an error instead."""
        now = time.time() if now is None else now
        for key in sorted(self.store.list(ACTIVE), key=lambda k: k.rsplit("/", 1)[-1]):
            _, tenant, job_id = key.split("/")
            try:
                job = self.get(tenant, job_id)
            except JobNotFound:  # an index entry left by a deleted job
                self.store.delete(key)
                continue
            action = claim_action(job, now, self.settings.job_max_attempts)
            if job.status in TERMINAL:
                self.store.delete(key)
            elif action == "fail":
                self._fail_lost(job, now)
            elif action == "claim":
                try:
                    return self._take(job, worker, now)
                except (PreconditionFailed, JobStateError, LeaseLost):
                    continue  # another worker was faster
        return None

    def _take(self, job: JobRecord, worker: str, now: float) -> JobRecord:
        def change(current: JobRecord) -> JobRecord:
            if claim_action(current, now, self.settings.job_max_attempts) != "claim":
                raise LeaseLost(f"job {current.id} was taken")
            return current.model_copy(update={"status": RUNNING, "lease_worker": worker,
                                              "attempts": current.attempts + 1,
                                              "lease_expires": now + self.settings.job_lease_s})
        return self.update(job.tenant, job.id, change)

    def _fail_lost(self, job: JobRecord, now: float) -> None:
        why = ("its worker stopped while publishing the model" if job.publishing else
               f"its worker stopped renewing its lease {job.attempts} time(s) (LORAPLEX_JOB_MAX_ATTEMPTS)")
        message = f"the job failed: {why}; the last checkpoint was step {job.step}: create the job again"
        try:
            failed = self.update(job.tenant, job.id, lambda j: j.model_copy(update={
                "status": FAILED, "finished_at": int(now), "lease_worker": None, "lease_expires": None,
                "error": {"code": "worker_lost", "message": message, "param": None}})
                if claim_action(j, now, self.settings.job_max_attempts) == "fail" else j)
        except JobStateError:
            return
        if failed.status == FAILED:
            self.add_event(failed, message, level="error")

    def renew(self, job: JobRecord, worker: str, **progress) -> JobRecord:
        """Extend `worker`'s lease and record progress (step, total_steps, estimated_finish, trained_tokens).

        Raises:
            LeaseLost: the job was cancelled, or another worker holds it now: stop, publish nothing.
        """
        def change(current: JobRecord) -> JobRecord:
            if current.status != RUNNING or current.lease_worker != worker:
                raise LeaseLost(f"job {current.id} is {current.status}, held by {current.lease_worker}")
            return current.model_copy(update={"lease_expires": time.time() + self.settings.job_lease_s, **progress})
        return self.update(job.tenant, job.id, change)

    # -- events
    def add_event(self, job: JobRecord, message: str, *, level: str = "info", type_: str = "message",
                  data: dict | None = None) -> dict:
        """Append one event (OpenAI's fine_tuning.job.event) to the job's log."""
        event = {"object": "fine_tuning.job.event", "id": new_id(EVENT_PREFIX), "created_at": int(time.time()),
                 "level": level, "message": message, "data": data or {}, "type": type_}
        self.store.put(self.job_prefix(job.tenant, job.id) + f"events/{event['id']}.json", json.dumps(event).encode())
        return event

    def events(self, tenant: str, job_id: str, after: str | None = None, limit: int = 20) -> tuple[list[dict], bool]:
        """A page of the job's events, newest first, and whether more remain."""
        self.get(tenant, job_id)
        prefix = self.job_prefix(tenant, job_id) + "events/"
        ids = [k[len(prefix):].removesuffix(".json") for k in self.store.list(prefix)]
        page, more = _page(ids, after, limit)
        out = []
        for event_id in page:
            try:
                out.append(json.loads(self.store.get(f"{prefix}{event_id}.json")[0]))
            except KeyMissing:
                continue
        return out, more

    # -- checkpoints
    def add_checkpoint(self, job: JobRecord, step: int, metrics: dict, files: dict[str, bytes]) -> dict:
        """Store a checkpoint's files, then its record (so a listed checkpoint can always be resumed from)."""
        base = self.job_prefix(job.tenant, job.id) + f"checkpoints/{step:010d}"
        for name, data in files.items():
            self.store.put(f"{base}/{name}", data)
        record = {"object": "fine_tuning.job.checkpoint", "id": f"{CHECKPOINT_PREFIX}{job.id[-24:]}{step:010d}",
                  "created_at": int(time.time()), "fine_tuning_job_id": job.id, "step_number": step,
                  "fine_tuned_model_checkpoint": None, "metrics": {"step": step, **metrics},
                  "files": sorted(files)}
        self.store.put(f"{base}.json", json.dumps(record).encode())
        return record

    def checkpoints(self, tenant: str, job_id: str, after: str | None = None,
                    limit: int = 10) -> tuple[list[dict], bool]:
        """A page of the job's checkpoints, newest first."""
        self.get(tenant, job_id)
        prefix = self.job_prefix(tenant, job_id) + "checkpoints/"
        records = {}
        for key in self.store.list(prefix):
            if key.endswith(".json") and "/" not in key[len(prefix):]:
                record = json.loads(self.store.get(key)[0])
                records[record["id"]] = record
        page, more = _page(list(records), after, limit)
        return [records[i] for i in page], more

    def latest_checkpoint(self, job: JobRecord) -> tuple[int, dict[str, bytes]] | None:
        """(step, {file: bytes}) of the job's newest checkpoint, or None."""
        found, _ = self.checkpoints(job.tenant, job.id, limit=1)
        if not found:
            return None
        step = found[0]["step_number"]
        base = self.job_prefix(job.tenant, job.id) + f"checkpoints/{step:010d}/"
        return step, {name: self.store.get(base + name)[0] for name in found[0]["files"]}
