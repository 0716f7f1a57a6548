"""Run one claimed job: fetch its files, train with training/sft.py (Trainer + PEFT), resume from the last
checkpoint if an earlier worker got that far, then publish the adapter through the registry's validation gate
and no-op probe and point the `prod` alias of the job's model name at it.

Nothing is published unless the worker still holds the job when training ends: the record is switched to
`publishing` by compare-and-swap first, and a cancel after that is refused.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

from common.errors import LoraplexError
from common.peft_format import ADAPTER_FILES
from registry.adapter_registry import AdapterRegistry
from registry.files import FileStore
from registry.job_spec import SUCCEEDED, JobRecord, LeaseLost, model_name
from registry.jobs import JobStore
from registry.settings import RegistrySettings
from training.config import LoraSettings, TrainJob, TrainSettings
from training.jobs.callback import JobCallback, JobStopped
from training.jobs.lease import LeaseKeeper
from training.sft import run_training

log = logging.getLogger(__name__)
CHECKPOINTS_PER_JOB = 4  # evaluate and checkpoint this many times in a job (the last at its end)


def train_job(job: JobRecord, settings: RegistrySettings, out_dir: Path, data: Path, val: Path | None,
              resume: bool) -> TrainJob:
    """The training run of `job`: LoRA on the served base with the job's hyperparameters."""
    hp, lora = job.hyperparameters, job.lora
    examples = sum(1 for line in data.read_text(encoding="utf-8").splitlines() if line.strip())
    train_examples = examples if val else max(1, examples - max(1, round(examples * 0.1)))
    steps = hp["n_epochs"] * math.ceil(train_examples / hp["batch_size"])
    return TrainJob(
        "lora", Path(settings.base_model), data, out_dir, val_data=val, resume=resume, overwrite=not resume,
        lora=LoraSettings(r=lora["r"], alpha=lora["alpha"], dropout=0.0, target_modules=tuple(lora["target_modules"])),
        train=TrainSettings(lr=settings.job_learning_rate * hp["learning_rate_multiplier"], epochs=hp["n_epochs"],
                            batch_size=hp["batch_size"], seed=job.seed, patience=0, progress=False,
                            eval_steps=max(1, math.ceil(steps / CHECKPOINTS_PER_JOB)), val_share=0.1,
                            max_length=1024))


def _fetch_checkpoint(jobs: JobStore, job: JobRecord, checkpoints: Path) -> int | None:
    found = jobs.latest_checkpoint(job)
    if found is None:
        return None
    step, files = found
    directory = checkpoints / f"checkpoint-{step}"
    for name, data in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    state = directory / "trainer_state.json"
    if state.is_file():  # the best checkpoint's path was the earlier worker's: point it here
        record = json.loads(state.read_text())
        if record.get("best_model_checkpoint"):
            record["best_model_checkpoint"] = str(directory)
            state.write_text(json.dumps(record))
    return step


class JobRunner:
    """Runs claimed jobs on this host.

    Args:
        settings: S3, base model, work directory, lease.
        worker: this worker's id (the lease holder's name).
    """

    def __init__(self, settings: RegistrySettings, jobs: JobStore, files: FileStore, adapters: AdapterRegistry,
                 worker: str):
        self.settings, self.jobs, self.files, self.adapters, self.worker = settings, jobs, files, adapters, worker

    def run(self, job: JobRecord) -> JobRecord | None:
        """Train and publish `job`; returns the final record (None when it stopped: cancelled or taken over)."""
        work = Path(self.settings.job_work_dir) / job.id
        shutil.rmtree(work, ignore_errors=True)
        try:
            with LeaseKeeper(self.jobs, job, self.worker) as keeper:
                return self._run(job, work, keeper)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _run(self, job: JobRecord, work: Path, keeper: LeaseKeeper) -> JobRecord | None:
        work.mkdir(parents=True)
        data = work / "train.jsonl"
        data.write_bytes(self.files.content(job.tenant, job.training_file))
        val = None
        if job.validation_file:
            val = work / "validation.jsonl"
            val.write_bytes(self.files.content(job.tenant, job.validation_file))
        step = _fetch_checkpoint(self.jobs, job, work / "run" / "checkpoints") if job.attempts > 1 else None
        if step is not None:
            self.jobs.add_event(job, f"Resuming from the checkpoint at step {step} (attempt {job.attempts}: the "
                                "previous worker stopped renewing its lease)", data={"step": step})
        elif job.attempts > 1:
            self.jobs.add_event(job, f"Restarting from the beginning (attempt {job.attempts}: the previous worker "
                                "stopped before its first checkpoint)")
        else:
            self.jobs.add_event(job, "Fine-tuning job started")
        try:
            record = run_training(train_job(job, self.settings, work / "run", data, val, step is not None),
                                  callbacks=[JobCallback(self.jobs, keeper)])
        except JobStopped as e:
            return self._stopped(keeper, str(e))
        except LoraplexError as e:  # bad data the upload check could not see (e.g. nothing left after truncation)
            return self._fail(keeper, e.code, e.message)
        if keeper.stopped:
            return self._stopped(keeper, keeper.stopped)
        return self._publish(keeper, work / "run", record)

    def _stopped(self, keeper: LeaseKeeper, why: str) -> None:
        log.info("job %s stopped: %s", keeper.job.id, why)
        job = self.jobs.get(keeper.job.tenant, keeper.job.id)
        if job.status == "cancelled":
            self.jobs.add_event(job, f"Training stopped at step {keeper.progress.get('step', 0)} after the cancel; "
                                "nothing was published")
        return None

    def _fail(self, keeper: LeaseKeeper, code: str, message: str) -> JobRecord | None:
        keeper.close()
        try:
            job = self.jobs.finish(keeper.job, "failed", worker=self.worker,
                                   error={"code": code, "message": message, "param": None})
        except LeaseLost:
            return None
        self.jobs.add_event(job, f"The job failed: {message}", level="error")
        return job

    def _publish(self, keeper: LeaseKeeper, run_dir: Path, record: dict) -> JobRecord | None:
        job = keeper.job
        name = job.fine_tuned_model or model_name(job.id, job.suffix)
        try:  # from here a cancel is refused: the model is being published
            job = self.jobs.update(job.tenant, job.id, lambda j: _mark_publishing(j, self.worker, name))
        except LeaseLost as e:
            return self._stopped(keeper, str(e))
        keeper.job = job
        files = {f: (run_dir / "adapter" / f).read_bytes() for f in ADAPTER_FILES}
        metadata = {"fine_tuning_job_id": job.id, "base": job.model, "hyperparameters": job.hyperparameters,
                    "lora": job.lora, "training_file": job.training_file, "validation_file": job.validation_file,
                    "metrics": record["metrics"], "dataset": {k: record["dataset"].get(k) for k in (
                        "sha256", "format", "examples", "train_examples", "val_examples", "train_tokens")},
                    "timings": record["timings"], "attempts": job.attempts}
        try:
            manifest = self.adapters.publish(job.tenant, name, files, uploader=f"fine-tuning:{job.id}",
                                             metadata=metadata)
            self.adapters.set_alias(job.tenant, name, "prod", manifest.version, None)
        except LoraplexError as e:  # the validation gate or the no-op probe refused it, or a limit was hit
            return self._fail(keeper, e.code, f"the trained adapter was not published: {e.message}")
        keeper.close()
        tokens = int(record["metrics"].get("tokens_seen") or 0)
        job = self.jobs.finish(job, SUCCEEDED, worker=self.worker, fine_tuned_model=name, trained_tokens=tokens,
                               step=record["metrics"]["steps"])
        self.jobs.add_event(job, f"New fine-tuned model created: {name} (version {manifest.version})",
                            data={"model": name, "version": manifest.version})
        self.jobs.add_event(job, "The job has successfully completed")
        return job


def _mark_publishing(job: JobRecord, worker: str, name: str) -> JobRecord:
    if job.status != "running" or job.lease_worker != worker:
        raise LeaseLost(f"job {job.id} is {job.status}, held by {job.lease_worker}")
    return job.model_copy(update={"publishing": True, "fine_tuned_model": name})
