"""`loraplex worker --ray`: the job worker loop in a Ray actor (a local cluster here) trains a tenant's job from
the same S3 state as plain workers, and its model is served at once. No plain worker runs on this bucket, so the
job can only have been trained by the actor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import running_gateway
from tests.e2e.test_fine_tuning import shout_file
from tests.waiting import wait_until
from training.tasks import make_prompt

openai = pytest.importorskip("openai", reason="the openai SDK is a dev dependency")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_ft(engine, seaweed, demo, tmp_path_factory):
    gen = running_gateway(engine, seaweed, demo, tmp_path_factory, "ftray")
    st = next(gen)
    tmp = tmp_path_factory.mktemp("ft-ray")
    env = {**os.environ, "LORAPLEX_S3_ENDPOINT": st.gateway.settings.s3_endpoint,
           "LORAPLEX_S3_BUCKET": st.gateway.settings.s3_bucket, "LORAPLEX_BASE_MODEL": str(demo.base_dir),
           "LORAPLEX_JOB_POLL_S": "0.5", "LORAPLEX_JOB_WORK_DIR": str(tmp / "work"), "OMP_NUM_THREADS": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}
    st.log = tmp / "ray-worker.log"
    with st.log.open("wb") as log:
        st.proc = subprocess.Popen([sys.executable, "-m", "training.jobs", "--ray", "--workers", "1"], cwd=ROOT,
                                   env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    st.key = st.add_tenant("rayco")
    yield st
    if st.proc.poll() is None:
        st.proc.send_signal(signal.SIGINT)  # the actors stop after their job and the local cluster shuts down
        try:
            st.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(st.proc.pid, signal.SIGKILL)
            st.proc.wait(timeout=30)
    next(gen, None)


def test_a_ray_worker_actor_trains_the_job_and_its_model_is_served(ray_ft):
    client = openai.OpenAI(base_url=f"{ray_ft.url}/v1", api_key=ray_ft.key, max_retries=0, timeout=60)
    data = client.files.create(file=("shout.jsonl", shout_file(200, seed=21)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="base", training_file=data.id, suffix="ray",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 32}}})
    found = {}

    def done():
        assert ray_ft.proc.poll() is None, ray_ft.log.read_text(errors="replace")[-3000:]
        found["job"] = client.fine_tuning.jobs.retrieve(job.id)
        return found["job"].status in ("succeeded", "failed", "cancelled")

    wait_until(done, timeout=300, interval=1.0, what="the Ray worker finished the job")
    finished = found["job"]
    assert finished.status == "succeeded", (finished.error, ray_ft.log.read_text(errors="replace")[-3000:])
    assert finished.fine_tuned_model == f"ft-ray-{job.id[-8:]}" and finished.trained_tokens > 0
    answer = client.completions.create(model=finished.fine_tuned_model, prompt=make_prompt("tenant"), max_tokens=8,
                                       temperature=0)
    assert answer.model == finished.fine_tuned_model and answer.choices[0].text
