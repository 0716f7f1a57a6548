"""The pure logic of fine-tuning jobs: JSONL checks naming the line, the state machine, leases, hyperparameters."""

from __future__ import annotations

import json

import pytest

from common.errors import InvalidRequest
from registry.files import InvalidFile, check_jsonl
from registry.job_spec import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    VALIDATING,
    JobRecord,
    JobStateError,
    check_transition,
    claim_action,
    is_id,
    lease_expired,
    method_hyperparameters,
    model_name,
    new_id,
    resolve_hyperparameters,
    resolve_lora,
)
from training.jobs.ray_workers import actor_resources, forwarded_env

pytestmark = pytest.mark.unit

PC = '{"prompt": "word: cat\\nanswer:", "completion": " CAT\\n"}'
CHAT = json.dumps({"messages": [{"role": "user", "content": "cat"}, {"role": "assistant", "content": "CAT"}]})


def lines(*rows: str) -> bytes:
    return ("\n".join(rows) + "\n").encode()


def test_valid_files_are_counted_and_their_format_named():
    assert check_jsonl(lines(PC, "", PC)) == (2, "prompt_completion")
    assert check_jsonl(lines(CHAT, CHAT)) == (2, "chat")
    assert check_jsonl(lines(PC, CHAT)) == (2, "mixed")


@pytest.mark.parametrize(("rows", "line", "words"), [
    ((PC, "{oops"), 2, "not valid JSON"),
    ((PC, PC, "[1, 2]"), 3, "a JSON list, not an object"),
    ((PC, '{"prompt": "a", "completion": ""}'), 2, "'completion' must be a non-empty string"),
    ((PC, '{"prompt": 3, "completion": "x"}'), 2, "'prompt' must be a string"),
    ((PC, '{"text": "x"}'), 2, "unknown keys ['text']"),
    ((CHAT, json.dumps({"messages": [{"role": "user", "content": "x"}]})), 2, "at least two messages"),
    ((CHAT, json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]})), 2,
     "the last message must be the assistant's"),
    ((CHAT, json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]})),
     2, "messages[0] must be"),
])
def test_a_bad_line_is_named_with_the_fix(rows, line, words):
    with pytest.raises(InvalidFile) as e:
        check_jsonl(lines(*rows))
    assert f"line {line}:" in e.value.message and words in e.value.message
    assert '{"prompt": "...", "completion": "..."}' in e.value.message  # the fix: what a line must look like
    assert e.value.status == 400


def test_not_utf8_and_too_few_examples_are_refused():
    with pytest.raises(InvalidFile, match="line 2: not UTF-8"):
        check_jsonl(PC.encode() + b"\n\xff\xfe\n")
    with pytest.raises(InvalidFile, match="holds 1 example"):
        check_jsonl(lines(PC))


def job(status: str = QUEUED, **kw) -> JobRecord:
    return JobRecord(id=new_id("ftjob-"), tenant="t", model="base", created_at=0, training_file="file-x",
                     hyperparameters={}, method={}, lora={}, status=status, **kw)


def test_the_state_machine_allows_only_forward_moves():
    for old, new in [(VALIDATING, QUEUED), (QUEUED, RUNNING), (RUNNING, SUCCEEDED), (RUNNING, CANCELLED),
                     (QUEUED, CANCELLED), (RUNNING, RUNNING), (VALIDATING, FAILED)]:
        check_transition(job(old), new)
    for old, new in [(SUCCEEDED, RUNNING), (CANCELLED, QUEUED), (FAILED, SUCCEEDED), (QUEUED, SUCCEEDED),
                     (VALIDATING, RUNNING), (CANCELLED, CANCELLED)]:
        with pytest.raises(JobStateError):
            check_transition(job(old), new)


def test_a_lease_expires_and_the_job_is_claimed_again_until_its_attempts_run_out():
    now = 1000.0
    held = job(RUNNING, lease_worker="w1", lease_expires=now + 5, attempts=1)
    assert not lease_expired(held, now) and claim_action(held, now, max_attempts=3) is None
    lost = job(RUNNING, lease_worker="w1", lease_expires=now - 0.1, attempts=1)
    assert lease_expired(lost, now) and claim_action(lost, now, max_attempts=3) == "claim"
    spent = job(RUNNING, lease_worker="w2", lease_expires=now - 1, attempts=3)
    assert claim_action(spent, now, max_attempts=3) == "fail"
    publishing = job(RUNNING, lease_worker="w1", lease_expires=now - 1, attempts=1, publishing=True)
    assert claim_action(publishing, now, max_attempts=3) == "fail"  # never trained twice into a half-published model
    assert claim_action(job(QUEUED), now, 3) == "claim"
    assert claim_action(job(CANCELLED), now, 3) is None and claim_action(job(VALIDATING), now, 3) is None


def test_ids_sort_by_creation_and_are_checked():
    first, second = new_id("ftjob-"), new_id("ftjob-")
    assert is_id(first, "ftjob-") and not is_id("ftjob-../x", "ftjob-") and not is_id(first, "file-")
    assert first[:19] < second[:19]  # microseconds, strictly increasing within a process
    assert model_name(first, "shout") == f"ft-shout-{first[-8:]}" and model_name(first, None) == f"ft-{first[-8:]}"


def test_hyperparameters_auto_and_explicit():
    assert resolve_hyperparameters(None, 100) == {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0}
    assert resolve_hyperparameters({"batch_size": "auto"}, 4)["batch_size"] == 3  # one example is held out
    got = resolve_hyperparameters({"n_epochs": 2, "batch_size": 16, "learning_rate_multiplier": 0.5}, 100)
    assert got == {"n_epochs": 2, "batch_size": 16, "learning_rate_multiplier": 0.5}
    for bad in ({"n_epochs": 0}, {"n_epochs": 2.5}, {"batch_size": "big"}, {"learning_rate_multiplier": -1},
                {"epochs": 3}):
        with pytest.raises(InvalidRequest):
            resolve_hyperparameters(bad, 100)


def test_the_method_object_wins_over_the_deprecated_top_level_hyperparameters():
    nested = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 5}}}
    assert method_hyperparameters(nested, {"n_epochs": 1}) == {"n_epochs": 5}
    assert method_hyperparameters(None, {"n_epochs": 1}) == {"n_epochs": 1}
    with pytest.raises(InvalidRequest, match="supervised"):
        method_hyperparameters({"type": "dpo"}, None)


def test_lora_extras_are_bounded_by_the_served_rank():
    assert resolve_lora(None, 16) == {"r": 8, "alpha": 16.0, "target_modules": ["all-linear"]}
    assert resolve_lora({"r": 4, "target_modules": ["q_proj", "v_proj"]}, 16)["target_modules"] == ["q_proj", "v_proj"]
    with pytest.raises(InvalidRequest, match="max-lora-rank"):
        resolve_lora({"r": 32}, 16)
    with pytest.raises(InvalidRequest):
        resolve_lora({"target_modules": ["../x"]}, 16)


def test_ray_workers_ask_for_a_gpu_each_when_the_cluster_has_them_and_forward_only_config():
    assert actor_resources({"CPU": 16.0, "GPU": 2.0}, 2) == {"num_gpus": 1.0, "num_cpus": 1.0}
    assert actor_resources({"CPU": 16.0, "GPU": 1.0}, 2) == {"num_gpus": 0.5, "num_cpus": 1.0}
    assert actor_resources({"CPU": 2.0}, 3) == {"num_gpus": 0.0, "num_cpus": 1.0}
    env = forwarded_env({"LORAPLEX_S3_BUCKET": "b", "AWS_ACCESS_KEY_ID": "k", "HOME": "/root", "PATH": "/bin"})
    assert env == {"LORAPLEX_S3_BUCKET": "b", "AWS_ACCESS_KEY_ID": "k"}
