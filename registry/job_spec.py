"""Fine-tuning jobs as data: the stored record, the state machine, leases, and the hyperparameters a request asks
for resolved ("auto" included). Pure: no storage here (registry/jobs.py keeps the records in the bucket).

States (OpenAI's): validating_files -> queued -> running -> succeeded | failed | cancelled. A running job whose
worker's lease ran out is claimed again (running -> running, by another worker, from its last checkpoint) until
it has lost `job_max_attempts` workers; then it fails with an error saying so.
"""

from __future__ import annotations

import secrets
import threading
import time

from pydantic import BaseModel, Field

from common.errors import Conflict, InvalidRequest, NotFound

VALIDATING, QUEUED, RUNNING = "validating_files", "queued", "running"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
TRANSITIONS: dict[str, frozenset[str]] = {
    VALIDATING: frozenset({QUEUED, FAILED, CANCELLED}),
    QUEUED: frozenset({RUNNING, FAILED, CANCELLED}),
    RUNNING: frozenset({RUNNING, SUCCEEDED, FAILED, CANCELLED}),  # running -> running: renewed or re-claimed
    SUCCEEDED: frozenset(), FAILED: frozenset(), CANCELLED: frozenset(),
}
AUTO_EPOCHS, AUTO_BATCH = 3, 8
MAX_EPOCHS, MAX_BATCH, MAX_LR_MULTIPLIER = 50, 256, 1000.0
DEFAULT_RANK = 8


class JobNotFound(NotFound):
    """A job id that does not exist *or belongs to another tenant*."""

    code = "fine_tuning_job_not_found"


class JobStateError(Conflict):
    """A state change the state machine does not allow (e.g. cancelling a finished job)."""

    code = "invalid_job_state"


class JobLimitExceeded(InvalidRequest):
    """Too many queued or running jobs for the tenant (LORAPLEX_MAX_ACTIVE_JOBS_PER_TENANT)."""

    status, type, code = 429, "rate_limit_error", "fine_tuning_job_limit"


class LeaseLost(Exception):
    """The worker no longer holds the job: it was cancelled, or its lease ran out and another worker took it."""


class JobRecord(BaseModel):
    """OpenAI's fine-tuning job object plus what the workers need (tenant, lease, progress, LoRA shape)."""

    id: str
    object: str = "fine_tuning.job"
    tenant: str
    model: str
    created_at: int
    finished_at: int | None = None
    status: str = VALIDATING
    error: dict | None = None
    fine_tuned_model: str | None = None
    training_file: str
    validation_file: str | None = None
    hyperparameters: dict
    method: dict
    lora: dict = Field(description="loraplex's extra: the adapter's r, alpha and target_modules.")
    suffix: str | None = None
    seed: int = 0
    metadata: dict | None = None
    trained_tokens: int | None = None
    estimated_finish: int | None = None
    result_files: list[str] = Field(default_factory=list)
    integrations: list = Field(default_factory=list)
    organization_id: str = ""
    # Internal (dropped by `public`): who holds the job, until when, and how far it got.
    lease_worker: str | None = None
    lease_expires: float | None = None
    attempts: int = 0
    publishing: bool = False
    step: int = 0
    total_steps: int | None = None

    def public(self) -> dict:
        out = self.model_dump(exclude={"tenant", "lease_worker", "lease_expires", "publishing"})
        out["progress"] = {"step": self.step, "total_steps": self.total_steps}
        return out


_last_us = 0
_id_lock = threading.Lock()


def new_id(prefix: str) -> str:
    """`prefix` + 13 hex digits of microseconds + 11 random: ids of one kind sort by creation time (strictly
    within a process, so a worker's events keep their order)."""
    global _last_us
    with _id_lock:
        _last_us = max(time.time_ns() // 1000, _last_us + 1)
        stamp = _last_us
    return f"{prefix}{stamp:013x}{secrets.token_hex(6)[:11]}"


def is_id(value: str, prefix: str) -> bool:
    body = value[len(prefix):] if isinstance(value, str) and value.startswith(prefix) else ""
    return len(body) == 24 and all(c in "0123456789abcdef" for c in body)


def check_transition(job: JobRecord, new_status: str) -> None:
    """Raise JobStateError unless `job` may move to `new_status`."""
    if new_status not in TRANSITIONS.get(job.status, frozenset()):
        raise JobStateError(f"job {job.id} is {job.status}: it cannot become {new_status}", param="status")


def lease_expired(job: JobRecord, now: float) -> bool:
    """A running job whose worker stopped renewing its lease."""
    return job.status == RUNNING and (job.lease_expires or 0.0) < now


def claim_action(job: JobRecord, now: float, max_attempts: int) -> str | None:
    """What a worker looking for work does with `job`: "claim" it, "fail" it (it lost too many workers), or
    nothing (None: someone holds it, or it is not waiting)."""
    if job.status == QUEUED:
        return "claim"
    if lease_expired(job, now) and not job.publishing:
        return "claim" if job.attempts < max_attempts else "fail"
    if lease_expired(job, now):  # lost while publishing: the version may exist, the alias may not
        return "fail"
    return None


def _choice(value, name: str, auto, kind: type, low, high):
    if value is None or value == "auto":
        return auto
    ok = isinstance(value, int | float) and not isinstance(value, bool) and (kind is float or float(value).is_integer())
    if not ok or not low <= value <= high:
        raise InvalidRequest(f"hyperparameters.{name} must be \"auto\" or a {kind.__name__} in [{low}, {high}], "
                             f"not {str(value)[:40]!r}", param=f"hyperparameters.{name}")
    return kind(value)


def resolve_hyperparameters(asked: dict | None, examples: int) -> dict:
    """OpenAI's supervised hyperparameters with "auto" resolved: n_epochs 3, batch_size 8 (at most the examples
    left after one is held out), learning_rate_multiplier 1."""
    asked = asked or {}
    if not isinstance(asked, dict):
        raise InvalidRequest("hyperparameters must be an object: {\"n_epochs\", \"batch_size\", "
                             "\"learning_rate_multiplier\"}", param="hyperparameters")
    unknown = sorted(set(asked) - {"n_epochs", "batch_size", "learning_rate_multiplier"})
    if unknown:
        raise InvalidRequest(f"unknown hyperparameters {unknown}: use n_epochs, batch_size, learning_rate_multiplier",
                             param="hyperparameters")
    auto_batch = max(1, min(AUTO_BATCH, examples - 1))
    return {"n_epochs": _choice(asked.get("n_epochs"), "n_epochs", AUTO_EPOCHS, int, 1, MAX_EPOCHS),
            "batch_size": _choice(asked.get("batch_size"), "batch_size", auto_batch, int, 1, MAX_BATCH),
            "learning_rate_multiplier": _choice(asked.get("learning_rate_multiplier"), "learning_rate_multiplier",
                                                1.0, float, 1e-6, MAX_LR_MULTIPLIER)}


def method_hyperparameters(method: dict | None, legacy: dict | None) -> dict | None:
    """The asked hyperparameters: `method.supervised.hyperparameters`, else the deprecated top-level ones."""
    if method is not None:
        if not isinstance(method, dict) or method.get("type", "supervised") != "supervised":
            raise InvalidRequest("method.type must be \"supervised\" (the only method loraplex trains)",
                                 param="method.type")
        supervised = method.get("supervised") or {}
        if not isinstance(supervised, dict):
            raise InvalidRequest("method.supervised must be an object: {\"hyperparameters\": {...}}",
                                 param="method.supervised")
        nested = supervised.get("hyperparameters")
        if nested is not None:
            return nested
    return legacy


def resolve_lora(asked: dict | None, max_rank: int) -> dict:
    """loraplex's extra `lora` object: r (default 8, at most the served maximum), alpha (default 2r),
    target_modules (default all-linear)."""
    asked = asked or {}
    unknown = sorted(set(asked) - {"r", "alpha", "target_modules"})
    if unknown:
        raise InvalidRequest(f"unknown lora keys {unknown}: use r, alpha, target_modules", param="lora")
    r = asked.get("r", min(DEFAULT_RANK, max_rank))
    if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= max_rank:
        raise InvalidRequest(f"lora.r must be an integer in [1, {max_rank}] (the engine's --max-lora-rank, "
                             "LORAPLEX_MAX_LORA_RANK)", param="lora.r")
    alpha = asked.get("alpha", 2 * r)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not 0 < alpha <= 4096:
        raise InvalidRequest("lora.alpha must be a positive number (default 2*r)", param="lora.alpha")
    targets = asked.get("target_modules", ["all-linear"])
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t.isidentifier() or
                                                               t == "all-linear" for t in targets):
        raise InvalidRequest("lora.target_modules must be a list of module names (e.g. [\"q_proj\", \"v_proj\"]) "
                             "or \"all-linear\"", param="lora.target_modules")
    return {"r": r, "alpha": float(alpha), "target_modules": targets}


def model_name(job_id: str, suffix: str | None) -> str:
    """The served name of a job's model: `ft-<suffix>-<8 hex of the id>` (a valid adapter name)."""
    tail = job_id[-8:]
    return f"ft-{suffix}-{tail}" if suffix else f"ft-{tail}"
