"""The registry through the whole stack (real engine, gateway, S3): the no-op probe refuses a silent adapter
at upload, and `loraplex train ... --push` publishes what it trained: an adapter that then serves, and a
full fine-tune into models/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load, save
from typer.testing import CliRunner

from common.peft_format import ADAPTER_FILES as FILES
from tests.e2e.helpers import complete, upload
from training.demo import demo_prompt
from training.tasks import dataset


def _new_tenant(stack, name: str) -> str:
    with stack.admin() as admin:
        r = admin.post("/admin/tenants", json={"name": name, "quotas": {}})
    assert r.status_code == 201, r.text
    return r.json()["api_key"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "reverse.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in dataset("reverse", 64, 11)))
    return path


def _cli(args: list[str], stack, key: str):
    from loraplex.cli import app

    result = CliRunner().invoke(app, args, env={"LORAPLEX_GATEWAY_URL": stack.url, "LORAPLEX_API_KEY": key})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_silent_no_op_adapter_is_refused_at_upload(stack, demo, tmp_path):
    key = _new_tenant(stack, "noop")
    d = demo.adapter_dirs["reverse"]
    tensors = {k: v * 1e-9 if ".lora_B." in k else v for k, v in load((d / FILES[1]).read_bytes()).items()}
    (tmp_path / FILES[0]).write_bytes((d / FILES[0]).read_bytes())
    (tmp_path / FILES[1]).write_bytes(save(tensors))
    upload(stack, key, "quiet", tmp_path, expect=422)
    with stack.client(key) as c:
        r = c.post("/v1/adapters/quiet/versions", files=[("files", (f, (tmp_path / f).read_bytes())) for f in FILES])
        assert "[no-op-probe]" in r.json()["error"]["message"]
        assert c.get("/v1/adapters").json()["data"] == []
    assert upload(stack, key, "loud", d)["health"]["rank"] == 8  # the real one passes, health stored


def test_train_lora_push_publishes_an_adapter_that_serves(stack, demo, data, tmp_path):
    key = _new_tenant(stack, "trainer")
    record = _cli(["train", "lora", "--base", str(demo.base_dir), "--data", str(data), "--out", str(tmp_path / "run"),
                   "-r", "4", "--lr", "5e-3", "--max-steps", "4", "--eval-steps", "4", "--batch-size", "8",
                   "--max-length", "64", "--no-progress", "--threads", "1", "--push", "fresh", "--alias", "prod",
                   "--json"], stack, key)
    pushed = record["push"]
    with stack.client(key) as c:
        info = c.get("/v1/adapters/fresh").json()
    assert info["aliases"] == {"prod": pushed["version"]}
    version = info["versions"][0]
    assert version["metadata"]["training"]["dataset_sha256"] == record["dataset"]["sha256"]
    assert version["health"]["rank"] == 4 and version["health"]["modules"] > 0
    # The engine loads it from the verified cache and answers with it.
    assert isinstance(complete(stack, key, "fresh", demo_prompt("lamp"), max_tokens=4), str)


def test_train_full_push_publishes_a_model(stack, demo, data, tmp_path):
    key = _new_tenant(stack, "fuller")
    record = _cli(["train", "full", "--base", str(demo.base_dir), "--data", str(data), "--out", str(tmp_path / "run"),
                   "--max-steps", "2", "--eval-steps", "2", "--batch-size", "8", "--max-length", "64",
                   "--no-progress", "--threads", "1", "--push", "ft", "--json"], stack, key)
    pushed = record["push"]
    assert pushed["kind"] == "full" and pushed["derived_from"]["name"] == demo.base_dir.name
    with stack.client(key) as c:
        listed = c.get("/v1/artifacts/models").json()["data"]
        assert [m["name"] for m in listed] == ["ft"]
        version = listed[0]["versions"][0]
        assert version["metadata"]["training"]["method"] == "full"
        assert version["metadata"]["training"]["dataset_sha256"] == record["dataset"]["sha256"]
        assert version["parameter_count"] == record["metrics"]["total_params"]
        local = tmp_path / "run" / "model" / "model.safetensors"
        r = c.get(f"/v1/artifacts/models/ft/versions/{pushed['version']}/files/model.safetensors")
        assert r.status_code == 200 and r.content == local.read_bytes()
        assert c.get("/v1/adapters").json()["data"] == []  # models/ and adapters/ stay apart
