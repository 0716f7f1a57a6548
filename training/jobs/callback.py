"""The Trainer callback of a job: metrics events, checkpoints to S3, and the stop check between steps."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from registry.jobs import JobStore
from training.jobs.lease import LeaseKeeper

MAX_METRIC_EVENTS = 200  # per job: a long job logs every k-th step


class JobStopped(Exception):
    """The job must stop: cancelled by the tenant, or taken over by another worker."""


def checkpoint_files(directory: Path) -> dict[str, bytes]:
    """Every file of a Trainer checkpoint directory by its relative path."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(Path(directory).rglob("*")) if p.is_file()}


class JobCallback(TrainerCallback):
    """Per step: report progress, log metrics, stop if the lease is lost; per save: upload the checkpoint.

    Args:
        jobs: the job store.
        keeper: the job's lease (its `job` is the current record).
    """

    def __init__(self, jobs: JobStore, keeper: LeaseKeeper):
        self.jobs, self.keeper = jobs, keeper
        self.every = 1
        self.train_loss: float | None = None
        self.eval_loss: dict[int, float] = {}

    def _check(self) -> None:
        if self.keeper.stopped:
            raise JobStopped(self.keeper.stopped)

    def on_train_begin(self, args, state, control, **kwargs):
        self.every = max(1, state.max_steps // MAX_METRIC_EVENTS)
        self.keeper.report(state.global_step, state.max_steps, int(state.num_input_tokens_seen or 0))
        self._check()

    def on_step_end(self, args, state, control, **kwargs):
        self.keeper.report(state.global_step, state.max_steps, int(state.num_input_tokens_seen or 0))
        if state.global_step % self.every == 0:
            control.should_log = True  # a metrics event per step (or per k-th step of a long job)
        self._check()
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "eval_loss" in logs:
            self.eval_loss[state.global_step] = logs["eval_loss"]
        if "loss" not in logs:
            return
        self.train_loss = float(logs["loss"])
        data = {"step": state.global_step, "total_steps": state.max_steps, "train_loss": round(self.train_loss, 5),
                "learning_rate": logs.get("learning_rate"), "tokens": int(state.num_input_tokens_seen or 0)}
        self.jobs.add_event(self.keeper.job, f"Step {state.global_step}/{state.max_steps}: training loss="
                            f"{self.train_loss:.4f}", type_="metrics", data=data)

    def on_save(self, args, state, control, **kwargs):
        self._check()  # a cancelled job uploads nothing more
        step = state.global_step
        directory = Path(args.output_dir) / f"checkpoint-{step}"
        if not directory.is_dir():
            return
        metrics = {"train_loss": self.train_loss, "valid_loss": self.eval_loss.get(step),
                   "tokens": int(state.num_input_tokens_seen or 0)}
        self.jobs.add_checkpoint(self.keeper.job, step, metrics, checkpoint_files(directory))
        self.jobs.add_event(self.keeper.job, f"Checkpoint saved at step {step}", data={"step": step})
