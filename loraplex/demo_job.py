"""`make demo`'s fine-tuning job: a tenant teaches the base a new task through the jobs API and calls the result.

The job runs on the worker `loraplex up` starts beside the gateway. A second demo run reuses the model a
succeeded demo job made instead of training again.
"""

from __future__ import annotations

import json
import time

from rich.console import Console

from loraplex.client import GatewayClient
from training.tasks import DEMO_WORDS, completion, dataset, make_prompt

FT_TENANT = "acme"  # its adapter reverses; the job teaches it to shout as a second model
FT_TASK = "upper"
SUFFIX = "demo-shout"
# Measured here: 800 random words (plus the demo's own), 8 epochs of 32 at 5e-3 -> ~94% of held-out words
# right, ~20 s of training on an idle 2-core host (tests/e2e/test_fine_tuning.py uses the same).
HYPERPARAMETERS = {"n_epochs": 8, "batch_size": 32, "learning_rate_multiplier": 25}
EXAMPLES, SEED = 800, 11
TIMEOUT_S = 900.0  # a loaded host trains several times slower; past this the demo says where the job stands
JOBS = "/v1/fine_tuning/jobs"
DONE = ("succeeded", "failed", "cancelled")


class DemoJobError(RuntimeError):
    """The demo's job did not succeed; the message says why and how to look."""


def training_file() -> bytes:
    rows = dataset(FT_TASK, EXAMPLES, SEED) + [(make_prompt(w), completion(FT_TASK, w)) for w in DEMO_WORDS]
    return "".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in rows).encode()


def _previous(client: GatewayClient) -> dict | None:
    jobs = client.call("GET", JOBS, params={"limit": 50})["data"]
    return next((j for j in jobs if j["status"] == "succeeded"
                 and (j.get("fine_tuned_model") or "").startswith(f"ft-{SUFFIX}-")), None)


def _wait(client: GatewayClient, job: dict, console: Console) -> dict:
    deadline = time.monotonic() + TIMEOUT_S
    with console.status(f"fine-tuning job {job['id']}: {job['status']}") as status:
        while job["status"] not in DONE:
            if time.monotonic() > deadline:
                raise DemoJobError(f"job {job['id']} is still {job['status']} after {TIMEOUT_S:.0f} s; follow it "
                                   f"with `loraplex ft show {job['id']} --follow --tenant {FT_TENANT}` "
                                   "(the worker's log is var/log/worker.log)")
            time.sleep(1.0)
            job = client.call("GET", f"{JOBS}/{job['id']}")
            p = job.get("progress") or {}
            status.update(f"fine-tuning job {job['id']}: {job['status']} "
                          f"(step {p.get('step') or 0}/{p.get('total_steps') or '?'})")
    if job["status"] != "succeeded":
        reason = (job.get("error") or {}).get("message") or job["status"]
        raise DemoJobError(f"fine-tuning job {job['id']} {job['status']}: {reason}")
    return job


def run_demo_job(client: GatewayClient, console: Console) -> tuple[dict, list[dict]]:
    """The demo tenant's succeeded job (new, or the last demo run's) and its model's answers to demo words."""
    job = _previous(client)
    if job is None:
        upload = client.call("POST", "/v1/files", files={"file": ("shout.jsonl", training_file(), "application/jsonl")},
                             data={"purpose": "fine-tune"})
        job = client.call("POST", JOBS, json={
            "model": "base", "training_file": upload["id"], "suffix": SUFFIX, "seed": SEED,
            "method": {"type": "supervised", "supervised": {"hyperparameters": HYPERPARAMETERS}}})
        job = _wait(client, job, console)
    model = job["fine_tuned_model"]
    rows = [{"model": model, "prompt": w, "answer": client.complete(model, make_prompt(w)).strip()}
            for w in DEMO_WORDS[:2]]
    return job, rows
