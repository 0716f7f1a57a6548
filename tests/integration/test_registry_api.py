"""The registry's HTTP API and CLI over a real gateway and SeaweedFS, without an engine (none is needed to
store, validate, probe and hand out artifacts): the no-op probe's 422, health in the manifest, upload
progress, and full/merged models under /v1/artifacts/models."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load, save
from typer.testing import CliRunner

from common.peft_format import ADAPTER_FILES as FILES
from common.procs import free_port
from loraplex.client import GatewayClient
from serving.settings import ServingSettings
from tests.e2e.helpers import start_gateway

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def gateway(seaweed, demo, tmp_path_factory):
    """A gateway built as `loraplex up` builds it (so with the probe), on a fresh bucket; no engine behind it."""
    engine = ServingSettings(base_model=demo.base_dir, engine_url=f"http://127.0.0.1:{free_port()}")
    st = start_gateway(engine, seaweed.endpoint, demo.base_dir, tmp_path_factory.mktemp("cache"))
    with st.admin() as admin:
        for name in ("acme", "other"):
            st.tenants[name] = admin.post("/admin/tenants", json={"name": name}).json()["api_key"]
    yield st
    st.close()


@pytest.fixture
def cli_env(gateway) -> dict:
    return {"LORAPLEX_GATEWAY_URL": gateway.url, "LORAPLEX_API_KEY": gateway.tenants["acme"], "COLUMNS": "200"}


def cli(args: list[str], env: dict):
    from loraplex.cli import app

    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    return result


def test_a_silent_no_op_upload_is_422_naming_the_probe(gateway, demo, cli_env, tmp_path):
    d = demo.adapter_dirs["shout"]
    tensors = {k: v * 1e-9 if ".lora_B." in k else v for k, v in load((d / FILES[1]).read_bytes()).items()}
    files = [("files", (FILES[0], (d / FILES[0]).read_bytes())), ("files", (FILES[1], save(tensors)))]
    with gateway.client(gateway.tenants["acme"]) as c:
        r = c.post("/v1/adapters/quiet/versions", files=files)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid_adapter" and "[no-op-probe]" in r.json()["error"]["message"]
        assert c.get("/v1/adapters/quiet").status_code == 404  # nothing published
    # The CLI shows the rule too (the message's [brackets] are not taken for rich markup).
    for _, (filename, data) in files:
        (tmp_path / filename).write_bytes(data)
    from loraplex.cli import app

    result = CliRunner().invoke(app, ["adapter", "push", str(tmp_path), "--name", "quiet"], env=cli_env)
    assert result.exit_code == 1 and "[no-op-probe]" in result.output, result.output


def test_adapter_push_streams_with_progress_and_stores_health(gateway, demo, cli_env):
    d = demo.adapter_dirs["reverse"]
    sent = []
    client = GatewayClient(gateway.url, gateway.tenants["acme"])
    out = client.push(d, "rev", progress=sent.append)
    assert sum(sent) == sum((d / f).stat().st_size for f in FILES) and len(sent) >= 2
    health = out["health"]
    assert health["rank"] == 8 and health["modules"] == 14 and 0 < health["effective_rank"]["median"] <= 8
    with gateway.client(gateway.tenants["acme"]) as c:
        assert c.get("/v1/adapters/rev").json()["versions"][0]["health"] == health
    pushed = cli(["adapter", "push", str(demo.adapter_dirs["caesar"]), "--name", "cae", "--alias", "prod"], cli_env)
    assert "version" in pushed.output and "effective rank" in pushed.output and "uploading caesar" in pushed.output
    listed = cli(["adapter", "ls"], cli_env).output
    assert "eff. rank" in listed and "cae" in listed and "rev" in listed
    shown = cli(["adapter", "show", "cae", "prod"], cli_env).output
    assert "model.layers.0.self_attn.q_proj" in shown and "near-zero" in shown


def test_models_api_push_list_pull_alias(gateway, demo, cli_env, tmp_path):
    src = tmp_path / "full"
    shutil.copytree(demo.base_dir, src)  # the demo base as a stand-in full fine-tune (plus its build.json)
    pushed = json.loads(cli(["model", "push", str(src), "--name", "ft", "--kind", "full", "--base",
                             str(demo.base_dir), "--alias", "prod", "--json"], cli_env).stdout)
    assert pushed["kind"] == "full" and pushed["parameter_count"] > 100_000
    assert "build.json" not in pushed["files"] and "tokenizer.json" in pushed["files"]
    assert pushed["derived_from"]["name"] == demo.base_dir.name
    assert pushed["derived_from"]["fingerprint"] == pushed["derived_from"]["served_base"]
    listed = json.loads(cli(["model", "ls", "--json"], cli_env).stdout)["data"]
    assert [(m["name"], m["aliases"]) for m in listed] == [("ft", {"prod": pushed["version"]})]
    cli(["model", "pull", "ft", "prod", "--out", str(tmp_path / "pulled")], cli_env)
    for name in pushed["files"]:
        assert (tmp_path / "pulled" / name).read_bytes() == (src / name).read_bytes()
    with gateway.client(gateway.tenants["other"]) as c:  # another tenant: nothing, and no oracle
        assert c.get("/v1/artifacts/models/ft").status_code == 404
        assert c.get(f"/v1/artifacts/models/ft/versions/{pushed['version']}/files/config.json").status_code == 404
        assert c.get("/v1/artifacts/models").json()["data"] == []
    with gateway.client(gateway.tenants["acme"]) as c:
        assert "ft" not in {m["id"] for m in c.get("/v1/models").json()["data"]}  # OpenAI's list is untouched
        assert c.delete(f"/v1/artifacts/models/ft/versions/{pushed['version']}").status_code == 409  # prod uses it
        stale = c.put("/v1/artifacts/models/ft/aliases/prod", json={"version": pushed["version"],
                                                                     "expected_version": "0" * 16})
        assert stale.status_code == 409


def test_models_api_refusals(gateway, demo):
    base = demo.base_dir
    good = [("files", (n, (base / n).read_bytes())) for n in ("config.json", "model.safetensors")]
    with gateway.client(gateway.tenants["acme"]) as c:
        cases = [
            (good + [("files", ("pytorch_model.bin", b"\x80\x04payload"))], {"kind": "full"}, "files"),
            (good, {}, "kind"),
            (good, {"kind": "adapter"}, "kind"),
            (good[:1], {"kind": "full"}, "files"),
            (good, {"kind": "full", "metadata": "[1"}, "metadata"),
        ]
        for files, data, rule in cases:
            r = c.post("/v1/artifacts/models/bad/versions", files=files, data=data)
            assert r.status_code == 422 and f"[{rule}]" in r.json()["error"]["message"], (rule, r.text)
        r = c.post("/v1/artifacts/models/bad/versions", files=good, data={"kind": "full", "path": "/etc"})
        assert r.status_code == 400
        assert c.get("/v1/artifacts/models/bad").status_code == 404


def test_train_merge_push_publishes_a_merged_model(gateway, demo, cli_env, tmp_path):
    out = tmp_path / "merged"
    result = cli(["train", "merge", "--base", str(demo.base_dir), "--adapter", str(demo.adapter_dirs["reverse"]),
                  "--out", str(out), "--push", "rev-merged", "--json"], cli_env)
    pushed = json.loads(result.stdout)["push"]
    assert pushed["kind"] == "merged" and pushed["derived_from"]["adapter"]["r"] == 8
    assert pushed["derived_from"]["fingerprint"]["weights_sha256"]
    client = GatewayClient(gateway.url, gateway.tenants["acme"])
    manifest = client.pull_model("rev-merged", pushed["version"], tmp_path / "pulled")
    assert manifest["sha256"] == pushed["sha256"]
    assert (tmp_path / "pulled" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
