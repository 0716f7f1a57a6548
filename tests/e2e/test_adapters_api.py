"""The adapter and tenant endpoints of CONTRACT.md over real HTTP, S3 and engine."""

from __future__ import annotations

import json
import time

from common.peft_format import ADAPTER_FILES as FILES
from tests.e2e.helpers import complete, upload
from training.demo import DEMO_WORDS, demo_prompt
from training.tasks import answer


def _new_tenant(stack, name: str) -> str:
    with stack.admin() as admin:
        r = admin.post("/admin/tenants", json={"name": name, "quotas": {"requests_per_minute": 60}})
    assert r.status_code == 201, r.text
    return r.json()["api_key"]


def test_upload_is_content_addressed_and_idempotent(stack, demo):
    key = _new_tenant(stack, "idem")
    a = upload(stack, key, "rev", demo.adapter_dirs["reverse"])
    b = upload(stack, key, "rev", demo.adapter_dirs["reverse"])
    assert a["version"] == b["version"] and a["sha256"] == b["sha256"]
    assert {"name", "version", "sha256", "size_bytes", "rank", "target_modules", "created_at"} <= set(a)
    c = upload(stack, key, "rev", demo.adapter_dirs["shout"])
    assert c["version"] != a["version"]
    with stack.client(key) as cl:
        info = cl.get("/v1/adapters/rev").json()
    assert {v["version"] for v in info["versions"]} == {a["version"], c["version"]}


def test_invalid_uploads_are_422_with_the_rule(stack, demo):
    key = _new_tenant(stack, "badup")
    d = demo.adapter_dirs["reverse"]
    only_config = [("files", ("adapter_config.json", (d / FILES[0]).read_bytes()))]
    with_pickle = [("files", (f, (d / f).read_bytes())) for f in FILES] + [("files", ("adapter_model.bin", b"x"))]
    cfg = json.loads((d / FILES[0]).read_text())
    cfg["peft_type"] = "PREFIX_TUNING"
    wrong_type = [("files", (FILES[0], json.dumps(cfg).encode())), ("files", (FILES[1], (d / FILES[1]).read_bytes()))]
    garbage = [("files", (FILES[0], (d / FILES[0]).read_bytes())), ("files", (FILES[1], b"\xff" * 64))]
    with stack.client(key) as c:
        for files in (only_config, with_pickle, wrong_type, garbage):
            r = c.post("/v1/adapters/x/versions", files=files)
            assert r.status_code == 422, r.text
            assert r.json()["error"]["code"] == "invalid_adapter"
        assert c.get("/v1/adapters").json()["data"] == []  # nothing half-published
        r = c.post("/v1/adapters/..%2Fetc/versions", files=only_config)
        assert r.status_code in (404, 422)


def test_alias_compare_and_swap_and_resolution(stack, demo):
    key = _new_tenant(stack, "alias")
    v1 = upload(stack, key, "m", demo.adapter_dirs["reverse"])["version"]
    v2 = upload(stack, key, "m", demo.adapter_dirs["shout"])["version"]
    word = DEMO_WORDS[0]
    with stack.client(key) as c:
        assert c.put("/v1/adapters/m/aliases/prod", json={"version": v1, "expected_version": None}).status_code == 200
        # NAME follows prod, not the newest version
        assert complete(stack, key, "m", demo_prompt(word)).strip() == answer("reverse", word)
        stale = c.put("/v1/adapters/m/aliases/prod", json={"version": v2, "expected_version": v2})
        assert stale.status_code == 409
        assert c.put("/v1/adapters/m/aliases/prod", json={"version": v2, "expected_version": v1}).status_code == 200
        assert complete(stack, key, "m", demo_prompt(word)).strip() == answer("upper", word)
        assert complete(stack, key, f"m@{v1}", demo_prompt(word)).strip() == answer("reverse", word)
        assert c.delete(f"/v1/adapters/m/versions/{v2}").status_code == 409  # prod points at it
        assert c.delete(f"/v1/adapters/m/versions/{v1}").status_code == 204
        r = c.post("/v1/completions", json={"model": f"m@{v1}", "prompt": "x", "max_tokens": 1})
        assert r.status_code == 404
        ids = {m["id"] for m in c.get("/v1/models").json()["data"]}
        assert {"m", "m@prod"} <= ids


def test_an_alias_moved_by_another_replica_is_followed_within_the_resolve_cache_time(stack, demo):
    """The gateway reuses a resolved name for `resolve_cache_s`; a move it did not make shows up after that."""
    key = _new_tenant(stack, "elsewhere")
    v1 = upload(stack, key, "m", demo.adapter_dirs["reverse"])["version"]
    v2 = upload(stack, key, "m", demo.adapter_dirs["shout"])["version"]
    word = DEMO_WORDS[1]
    with stack.client(key) as c:
        assert c.put("/v1/adapters/m/aliases/prod", json={"version": v1, "expected_version": None}).status_code == 200
    assert complete(stack, key, "m", demo_prompt(word)).strip() == answer("reverse", word)
    stack.gateway.adapters.set_alias("elsewhere", "m", "prod", v2, v1)  # straight to S3, as another replica would
    moved = time.monotonic()
    while (out := complete(stack, key, "m", demo_prompt(word)).strip()) != answer("upper", word):
        assert out == answer("reverse", word)  # the previous version meanwhile, never anything else
        # + 3 s: the background renewal's S3 round trip (~10 ms) and the answers in flight (~0.1 s each
        # here, a few times that on a loaded host)
        assert time.monotonic() - moved < stack.gateway.settings.resolve_cache_s + 3, "the move was never seen"
        time.sleep(0.1)


def test_a_key_revoked_by_another_replica_stops_working_within_the_auth_cache_time(stack):
    """The gateway reuses a known key for `auth_cache_s`, then renews it in the background: a key
    rotated where this gateway cannot see it works until then, and is refused soon after, never again."""
    key = _new_tenant(stack, "revoked-elsewhere")
    with stack.client(key) as c:
        assert c.get("/v1/models").status_code == 200
        stack.gateway.tenants.rotate_key("revoked-elsewhere")  # straight to S3: the gateway's memory is not told
        rotated = time.monotonic()
        while (status := c.get("/v1/models").status_code) == 200:
            assert time.monotonic() - rotated < stack.gateway.settings.auth_cache_s + 3, "never refused"  # as above
            time.sleep(0.1)
        assert status == 401
        assert all(c.get("/v1/models").status_code == 401 for _ in range(5))


def test_tenant_admin_rotate_and_delete(stack, demo):
    key = _new_tenant(stack, "rotor")
    upload(stack, key, "rev", demo.adapter_dirs["reverse"])
    with stack.admin() as admin:
        assert admin.post("/admin/tenants", json={"name": "rotor"}).status_code == 409
        assert "rotor" in {t["name"] for t in admin.get("/admin/tenants").json()["data"]}
        new_key = admin.post("/admin/tenants/rotor/keys").json()["api_key"]
        with stack.client(key) as old:
            assert old.get("/v1/models").status_code == 401
        assert complete(stack, new_key, "rev", demo_prompt("abc")).strip() == answer("reverse", "abc")
        assert admin.delete("/admin/tenants/rotor").status_code == 204
    with stack.client(new_key) as c:
        assert c.get("/v1/models").status_code == 401


def test_training_metadata_travels_with_the_upload(stack, demo):
    key = _new_tenant(stack, "meta")
    d = demo.adapter_dirs["caesar"]
    files = [("files", (f, (d / f).read_bytes())) for f in FILES]
    meta = {"dataset_sha256": "ab" * 32, "settings": {"r": 8}, "metrics": {"val_loss": 0.01}}
    with stack.client(key) as c:
        r = c.post("/v1/adapters/c/versions", files=files, data={"metadata": json.dumps(meta)})
        assert r.status_code == 201, r.text
        assert r.json()["metadata"] == meta
        assert c.get("/v1/adapters/c").json()["versions"][0]["metadata"] == meta
        bad = c.post("/v1/adapters/c/versions", files=files, data={"metadata": "[1, 2"})
        assert bad.status_code == 422 and "metadata" in bad.json()["error"]["message"]
        extra = c.post("/v1/adapters/c/versions", files=files, data={"path": "/etc/passwd"})
        assert extra.status_code == 400
