"""Job records on real SeaweedFS: racing workers claim a job exactly once, leases hand it on, cancel and limits."""

from __future__ import annotations

import threading
import time

import pytest

from registry.files import FileNotFound, FileStore
from registry.job_spec import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    JobLimitExceeded,
    JobRecord,
    JobStateError,
    LeaseLost,
    new_id,
)
from registry.jobs import JOB_PREFIX, JobStore

pytestmark = pytest.mark.integration


def queued(jobs: JobStore, tenant: str = "acme") -> JobRecord:
    job = JobRecord(id=new_id(JOB_PREFIX), tenant=tenant, model="base", created_at=int(time.time()),
                    training_file="file-x", hyperparameters={}, method={}, lora={}, status=QUEUED)
    return jobs.create(job)


def test_eight_racing_workers_claim_one_job_exactly_once(store, registry_settings):
    jobs = JobStore(store, registry_settings)
    job = queued(jobs)
    won: list = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        got = jobs.claim(f"w{i}")
        if got is not None:
            won.append(got)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and won[0].id == job.id
    stored = jobs.get("acme", job.id)
    assert stored.status == RUNNING and stored.lease_worker == won[0].lease_worker and stored.attempts == 1


def test_an_expired_lease_hands_the_job_on_and_the_old_worker_loses_it(store, registry_settings):
    settings = registry_settings.model_copy(update={"job_lease_s": 0.5, "job_max_attempts": 2})
    jobs = JobStore(store, settings)
    job = queued(jobs)
    first = jobs.claim("w1")
    assert jobs.claim("w2") is None  # held
    time.sleep(0.6)
    second = jobs.claim("w2")
    assert second.id == job.id and second.attempts == 2 and second.lease_worker == "w2"
    with pytest.raises(LeaseLost):
        jobs.renew(first, "w1")  # the slow first worker stops, publishing nothing
    jobs.renew(second, "w2", step=5)
    time.sleep(0.6)
    assert jobs.claim("w3") is None  # two workers lost: failed, not claimed a third time
    failed = jobs.get("acme", job.id)
    assert failed.status == FAILED and "stopped renewing its lease 2 time(s)" in failed.error["message"]
    assert store.list("jobs-active/") == []


def test_cancel_and_the_per_tenant_limit(store, registry_settings):
    jobs = JobStore(store, registry_settings.model_copy(update={"max_active_jobs_per_tenant": 2}))
    a, b = queued(jobs), queued(jobs)
    with pytest.raises(JobLimitExceeded, match="the limit is 2"):
        queued(jobs)
    queued(jobs, tenant="other")  # counted per tenant
    running = jobs.claim("w1")
    assert running.id == a.id
    assert jobs.cancel("acme", a.id).status == CANCELLED
    with pytest.raises(LeaseLost):
        jobs.renew(running, "w1")
    with pytest.raises(JobStateError, match="already cancelled"):
        jobs.cancel("acme", a.id)
    queued(jobs)  # a cancelled job no longer counts
    assert jobs.get("acme", b.id).status == QUEUED


def test_files_are_scoped_to_their_tenant(store, registry_settings):
    files = FileStore(store, registry_settings)
    record = files.upload("acme", "d.jsonl", "fine-tune", b'{"prompt": "a", "completion": "b"}\n' * 2)
    assert files.content("acme", record.id).count(b"\n") == 2 and files.list("acme")[0].id == record.id
    with pytest.raises(FileNotFound):
        files.get("other", record.id)
    assert files.list("other") == []
    files.delete("acme", record.id)
    with pytest.raises(FileNotFound):
        files.get("acme", record.id)
