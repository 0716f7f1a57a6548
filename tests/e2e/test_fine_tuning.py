"""Fine-tuning as a service through the unmodified `openai` SDK: real gateway, SeaweedFS, vLLM engine and job
workers (`python -m training.jobs` subprocesses) on the demo base, which only echoes a word.

A job teaches it to SHOUT (upper-case the word); the model it publishes answers held-out words that way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from registry.jobs import JobStore
from tests.e2e.helpers import running_gateway
from tests.waiting import wait_until
from training.tasks import completion, dataset, make_prompt, random_words

openai = pytest.importorskip("openai", reason="the openai SDK is a dev dependency")

ROOT = Path(__file__).resolve().parents[2]
LEASE_S = 6  # short, so a killed worker's job is taken over quickly
# Measured here: 800 examples, 8 epochs of 32 (184 steps) at 5e-3 -> 94% of held-out words right, in ~20 s.
SHOUT = {"n_epochs": 8, "batch_size": 32, "learning_rate_multiplier": 25}


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def shout_file(n: int, seed: int) -> bytes:
    return _jsonl({"prompt": p, "completion": c} for p, c in dataset("upper", n, seed))


class Workers:
    """Job worker subprocesses on the module's bucket."""

    def __init__(self, st, demo, tmp: Path):
        self.env = {**os.environ, "LORAPLEX_S3_ENDPOINT": st.gateway.settings.s3_endpoint,
                    "LORAPLEX_S3_BUCKET": st.gateway.settings.s3_bucket, "LORAPLEX_BASE_MODEL": str(demo.base_dir),
                    "LORAPLEX_JOB_LEASE_S": str(LEASE_S), "LORAPLEX_JOB_POLL_S": "0.5",
                    "LORAPLEX_JOB_WORK_DIR": str(tmp / "work"), "OMP_NUM_THREADS": "1"}
        self.tmp, self.procs = tmp, []

    def start(self) -> subprocess.Popen:
        log = (self.tmp / f"worker-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "training.jobs"], cwd=ROOT, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.tmp.glob("worker-*.log")))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


@pytest.fixture(scope="module")
def ft(engine, seaweed, demo, tmp_path_factory):
    gen = running_gateway(engine, seaweed, demo, tmp_path_factory, "ft", max_active_jobs_per_tenant=2,
                          max_file_bytes=256 * 1024)
    st = next(gen)
    workers = Workers(st, demo, tmp_path_factory.mktemp("ft-workers"))
    workers.start()
    st.workers = workers
    st.keys = {name: st.add_tenant(name) for name in ("ftco", "ftother")}
    yield st
    workers.stop()
    next(gen, None)


def sdk(st, tenant: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{st.url}/v1", api_key=st.keys[tenant], max_retries=0, timeout=60)


def wait_status(client, job_id: str, statuses: set[str], timeout: float, st) -> object:
    found = {}

    def reached():
        found["job"] = client.fine_tuning.jobs.retrieve(job_id)
        return found["job"].status in statuses

    try:
        wait_until(reached, timeout=timeout, interval=1.0, what=f"job {job_id} in {statuses}")
    except AssertionError:
        raise AssertionError(f"job {job_id} is {found['job'].status}; workers:\n{st.workers.logs()}") from None
    return found["job"]


def events(client, job_id: str) -> list:
    return list(client.fine_tuning.jobs.list_events(job_id, limit=100))


def test_a_malformed_or_oversized_file_is_refused_at_upload_naming_the_line(ft):
    client = sdk(ft, "ftco")
    bad = b'{"prompt": "a", "completion": " b"}\n{"prompt": "c", "completion": " d"}\n{"prompt": "e", oops}\n'
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    assert "line 3" in e.value.message and "not valid JSON" in e.value.message
    chat = _jsonl([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "HI"}]},
                   {"messages": [{"role": "user", "content": "no answer"}]}])
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("chat.jsonl", chat), purpose="fine-tune")
    assert "line 2" in e.value.message and "at least two messages" in e.value.message
    with pytest.raises(openai.APIStatusError) as e:
        client.files.create(file=("big.jsonl", shout_file(6000, seed=5)), purpose="fine-tune")
    assert e.value.status_code == 413 and "LORAPLEX_MAX_FILE_BYTES" in e.value.message
    assert all(f.filename not in ("bad.jsonl", "chat.jsonl", "big.jsonl") for f in client.files.list())


def test_a_job_trains_publishes_and_serves_the_learned_task(ft):
    client, other = sdk(ft, "ftco"), sdk(ft, "ftother")
    train_rows = shout_file(800, seed=11)
    uploaded = client.files.create(file=("shout.jsonl", train_rows), purpose="fine-tune")
    assert uploaded.bytes == len(train_rows) and uploaded.purpose == "fine-tune"
    assert client.files.retrieve(uploaded.id).filename == "shout.jsonl"
    assert client.files.content(uploaded.id).content == train_rows
    job = client.fine_tuning.jobs.create(
        model="base", training_file=uploaded.id, suffix="shout", seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": SHOUT}}, extra_body={"lora": {"r": 8}})
    assert job.status == "queued" and job.hyperparameters.n_epochs == 8
    done = wait_status(client, job.id, {"succeeded", "failed", "cancelled"}, 300, ft)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft-shout-{job.id[-8:]}" and done.trained_tokens > 0

    # The fine-tuned model answers held-out words in upper case at once; the base still echoes them.
    held_out = random_words(20, seed=99, exclude={json.loads(line)["prompt"].split()[1]
                                                  for line in train_rows.decode().splitlines()})
    right = 0
    for word in held_out:
        out = client.completions.create(model=done.fine_tuned_model, prompt=make_prompt(word), max_tokens=12,
                                        temperature=0)
        right += out.choices[0].text == completion("upper", word)
    assert right >= 16, f"{right}/20 held-out words shouted"
    base = client.completions.create(model="base", prompt=make_prompt(held_out[0]), max_tokens=12, temperature=0)
    assert base.choices[0].text == completion("echo", held_out[0])

    # list / retrieve / events / checkpoints
    assert job.id in [j.id for j in client.fine_tuning.jobs.list(limit=10)]
    assert client.fine_tuning.jobs.list(limit=1).data[0].id == job.id
    log = events(client, job.id)
    metrics = [e for e in log if e.type == "metrics"]
    assert len(metrics) >= 100 and {"train_loss", "learning_rate", "tokens", "step"} <= set(metrics[0].data)
    assert metrics[0].data["train_loss"] < metrics[-1].data["train_loss"]  # newest first: the loss fell
    messages = [e.message for e in log]
    assert "The job has successfully completed" in messages and "Fine-tuning job started" in messages
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert len(checkpoints) >= 3 and checkpoints[0].step_number > checkpoints[-1].step_number  # newest first
    assert checkpoints[0].metrics.valid_loss is not None and checkpoints[0].metrics.train_loss is not None

    # The published version carries its training metadata and health.
    with ft.client(ft.keys["ftco"]) as c:
        adapter = c.get(f"/v1/adapters/{done.fine_tuned_model}").json()
    version = adapter["versions"][0]
    assert adapter["aliases"] == {"prod": version["version"]}
    assert version["metadata"]["fine_tuning_job_id"] == job.id and version["health"]["modules"] > 0

    # Another tenant sees none of it: the file, the job and the model are all 404.
    for call in (lambda: other.files.retrieve(uploaded.id), lambda: other.files.content(uploaded.id),
                 lambda: other.files.delete(uploaded.id), lambda: other.fine_tuning.jobs.retrieve(job.id),
                 lambda: other.fine_tuning.jobs.cancel(job.id), lambda: other.fine_tuning.jobs.list_events(job.id),
                 lambda: other.completions.create(model=done.fine_tuned_model, prompt="x", max_tokens=2)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.NotFoundError):  # nor can it train on the file
        other.fine_tuning.jobs.create(model="base", training_file=uploaded.id)
    assert not list(other.fine_tuning.jobs.list()) and not list(other.files.list())
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_cancel_stops_training_within_seconds_and_publishes_nothing_and_the_limit_is_429(ft):
    client = sdk(ft, "ftco")
    data = client.files.create(file=("long.jsonl", shout_file(400, seed=12)), purpose="fine-tune")
    long = {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 8}}}}
    first = client.fine_tuning.jobs.create(model="base", training_file=data.id, **long)
    second = client.fine_tuning.jobs.create(model="base", training_file=data.id, hyperparameters={"n_epochs": 50})
    with pytest.raises(openai.RateLimitError) as e:  # two are queued or running: the limit
        client.fine_tuning.jobs.create(model="base", training_file=data.id)
    assert "the limit is 2" in e.value.message
    wait_status(client, first.id, {"running"}, 120, ft)
    wait_until(lambda: any(e.type == "metrics" for e in events(client, first.id)), timeout=120, interval=0.5,
               what="the first job's first step")
    assert client.fine_tuning.jobs.cancel(first.id).status == "cancelled"
    assert client.fine_tuning.jobs.cancel(second.id).status == "cancelled"
    wait_until(lambda: any(e.message.startswith("Training stopped") for e in events(client, first.id)),
               timeout=30, interval=0.5, what="the worker stopped the cancelled job")
    stopped = len([e for e in events(client, first.id) if e.type == "metrics"])
    third = client.fine_tuning.jobs.create(model="base", training_file=data.id)  # cancelled jobs count no more
    client.fine_tuning.jobs.cancel(third.id)
    assert len([e for e in events(client, first.id) if e.type == "metrics"]) == stopped  # no step after the stop
    with ft.client(ft.keys["ftco"]) as c:
        names = [a["name"] for a in c.get("/v1/adapters").json()["data"]]
    assert f"ft-{first.id[-8:]}" not in names and f"ft-{second.id[-8:]}" not in names
    assert client.fine_tuning.jobs.retrieve(first.id).fine_tuned_model is None


def test_a_worker_killed_mid_job_leaves_a_job_another_worker_resumes(ft):
    client = sdk(ft, "ftco")
    ft.workers.start()  # two workers: the one not killed takes over once the lease runs out
    data = client.files.create(file=("kill.jsonl", shout_file(600, seed=13)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="base", training_file=data.id, suffix="resumed",
                                         hyperparameters={"n_epochs": 4, "batch_size": 16})
    wait_until(lambda: list(client.fine_tuning.jobs.checkpoints.list(job.id)), timeout=180, interval=0.5,
               what="the job's first checkpoint")
    record = JobStore(ft.gateway.store, ft.gateway.settings).get("ftco", job.id)
    holder = int(record.lease_worker.split(":")[1])
    victim = next(p for p in ft.workers.procs if p.pid == holder)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    if all(p.poll() is not None for p in ft.workers.procs):  # the spare was the victim and the first had died
        ft.workers.start()
    done = wait_status(client, job.id, {"succeeded", "failed", "cancelled"}, 300, ft)
    assert done.status == "succeeded", done.error
    resumed = [e for e in events(client, job.id) if e.message.startswith("Resuming from the checkpoint")]
    assert resumed and resumed[0].data["step"] > 0
    assert JobStore(ft.gateway.store, ft.gateway.settings).get("ftco", job.id).attempts == 2
    out = client.completions.create(model=done.fine_tuned_model, prompt=make_prompt("gpu"), max_tokens=8,
                                    temperature=0)
    assert out.choices[0].text  # served at once
