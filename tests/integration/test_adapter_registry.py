"""Adapters on a real SeaweedFS: publish, resolve, aliases by compare-and-swap, deletion, isolation."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from common.errors import AliasConflict, InvalidAdapter, InvalidName, ModelNotFound, VersionInUse
from common.peft_format import CONFIG_FILE, WEIGHTS_FILE
from registry import layout
from registry.adapter_registry import AdapterRegistry
from registry.errors import KeyMissing
from tests.helpers.tiny_artifacts import adapter_files

pytestmark = pytest.mark.integration


@pytest.fixture
def adapters(store, registry_settings) -> AdapterRegistry:
    return AdapterRegistry(store, registry_settings)


def test_publish_and_resolve(adapters):
    manifest = adapters.publish("acme", "chat", adapter_files(rank=8), uploader="alice", metadata={"steps": 100})
    assert (manifest.tenant, manifest.name, manifest.rank, manifest.alpha) == ("acme", "chat", 8, 16.0)
    assert manifest.target_modules == ["q_proj", "v_proj"] and manifest.metadata == {"steps": 100}
    assert manifest.base_model.architecture == "LlamaForCausalLM" and manifest.uploader == "alice"
    assert manifest.size_bytes == sum(f.size for f in manifest.files.values())
    for ref in ("chat", f"chat@{manifest.version}"):
        assert adapters.resolve("acme", ref) == manifest
    files = adapter_files(rank=8)
    assert adapters.open_file(manifest, WEIGHTS_FILE) == files[WEIGHTS_FILE]


def test_same_bytes_same_version(adapters):
    first = adapters.publish("acme", "chat", adapter_files(), uploader="alice")
    again = adapters.publish("acme", "chat", adapter_files(), uploader="bob")
    assert again == first  # the first upload's manifest, unchanged
    other = adapters.publish("acme", "chat", adapter_files(seed=2), uploader="alice")
    assert other.version != first.version
    assert [v.version for v in adapters.get_adapter("acme", "chat").versions] == [other.version, first.version]


def test_concurrent_publish_of_the_same_bytes(adapters, store):
    files = adapter_files(seed=5)
    with ThreadPoolExecutor(8) as pool:
        manifests = list(pool.map(lambda i: adapters.publish("acme", "chat", files, uploader=f"u{i}"), range(8)))
    assert len({m.model_dump_json() for m in manifests}) == 1
    version = manifests[0].version
    assert store.list(layout.versions_prefix("acme", "chat")) == sorted(
        layout.file_key("acme", "chat", version, f)
        for f in (CONFIG_FILE, WEIGHTS_FILE, "manifest.json"))


def test_newest_version_or_prod_alias(adapters):
    old = adapters.publish("acme", "chat", adapter_files(seed=1), uploader="a")
    new = adapters.publish("acme", "chat", adapter_files(seed=2), uploader="a")
    assert adapters.resolve("acme", "chat") == new
    adapters.set_alias("acme", "chat", "prod", old.version, None)
    assert adapters.resolve("acme", "chat") == old
    assert adapters.resolve("acme", "chat@prod") == old
    assert adapters.get_adapter("acme", "chat").aliases == {"prod": old.version}


def test_alias_compare_and_swap(adapters):
    v1 = adapters.publish("acme", "chat", adapter_files(seed=1), uploader="a").version
    v2 = adapters.publish("acme", "chat", adapter_files(seed=2), uploader="a").version
    result = adapters.set_alias("acme", "chat", "prod", v1, None)
    assert (result["version"], result["previous_version"]) == (v1, None)
    with pytest.raises(AliasConflict, match=f"expected_version='{v1}'"):
        adapters.set_alias("acme", "chat", "prod", v2, None)  # exists already
    with pytest.raises(AliasConflict, match=f"points to {v1}"):
        adapters.set_alias("acme", "chat", "prod", v2, v2)  # stale expectation
    with pytest.raises(AliasConflict, match="expected_version=null"):
        adapters.set_alias("acme", "chat", "beta", v2, v1)  # does not exist yet
    adapters.set_alias("acme", "chat", "prod", v2, v1)
    assert adapters.resolve("acme", "chat@prod").version == v2
    with pytest.raises(ModelNotFound):
        adapters.set_alias("acme", "chat", "prod", "0" * 16, v2)  # the target must exist
    with pytest.raises(InvalidName):
        adapters.set_alias("acme", "chat", "0123456789abcdef", v2, None)  # would shadow a version id


@pytest.mark.parametrize("same_target", [True, False])
def test_32_concurrent_promotions_exactly_one_wins(adapters, same_target):
    versions = [adapters.publish("acme", "chat", adapter_files(seed=s), uploader="a").version for s in (1, 2, 3)]
    adapters.set_alias("acme", "chat", "prod", versions[0], None)

    def promote(i: int) -> str:
        target = versions[1] if same_target else versions[1 + i % 2]
        try:
            adapters.set_alias("acme", "chat", "prod", target, versions[0])
            return "won"
        except AliasConflict:
            return "conflict"

    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(promote, range(32)))
    assert outcomes.count("won") == 1 and outcomes.count("conflict") == 31


def test_delete_version(adapters, store):
    v1 = adapters.publish("acme", "chat", adapter_files(seed=1), uploader="a").version
    v2 = adapters.publish("acme", "chat", adapter_files(seed=2), uploader="a").version
    adapters.set_alias("acme", "chat", "prod", v1, None)
    with pytest.raises(VersionInUse, match="prod"):
        adapters.delete_version("acme", "chat", v1)
    adapters.set_alias("acme", "chat", "prod", v2, v1)
    adapters.delete_version("acme", "chat", v1)
    with pytest.raises(ModelNotFound):
        adapters.resolve("acme", f"chat@{v1}")
    assert store.list(layout.version_prefix("acme", "chat", v1)) == []
    with pytest.raises(ModelNotFound):
        adapters.delete_version("acme", "chat", v1)


def test_files_without_manifest_are_invisible(adapters, store):
    """A crash after the files and before the manifest leaves nothing visible; a retry completes it."""
    files = adapter_files(seed=7)
    manifest = adapters.publish("acme", "chat", files, uploader="a")
    store.delete(layout.manifest_key("acme", "chat", manifest.version))  # as if the manifest never came
    assert store.list(layout.version_prefix("acme", "chat", manifest.version))  # the files are there
    with pytest.raises(ModelNotFound):
        adapters.resolve("acme", "chat")
    with pytest.raises(ModelNotFound):
        adapters.resolve("acme", f"chat@{manifest.version}")
    with pytest.raises(ModelNotFound):
        adapters.get_adapter("acme", "chat")
    assert adapters.list_adapters("acme") == []
    again = adapters.publish("acme", "chat", files, uploader="a")
    assert again.version == manifest.version and adapters.resolve("acme", "chat") == again


def test_a_damaged_invisible_file_is_repaired_on_retry(adapters, store):
    files = adapter_files(seed=8)
    manifest = adapters.publish("acme", "chat", files, uploader="a")
    store.delete(layout.manifest_key("acme", "chat", manifest.version))
    store.put(layout.file_key("acme", "chat", manifest.version, WEIGHTS_FILE), b"junk")
    adapters.publish("acme", "chat", files, uploader="a")
    assert adapters.open_file(manifest, WEIGHTS_FILE) == files[WEIGHTS_FILE]


def test_tenants_are_isolated(adapters):
    manifest = adapters.publish("acme", "secret", adapter_files(), uploader="acme")
    adapters.set_alias("acme", "secret", "prod", manifest.version, None)
    for ref in ("secret", "secret@prod", f"secret@{manifest.version}"):
        with pytest.raises(ModelNotFound) as info:
            adapters.resolve("beta", ref)
        assert "acme" not in info.value.message
    assert adapters.list_adapters("beta") == []
    with pytest.raises(ModelNotFound):
        adapters.get_adapter("beta", "secret")


BAD_REFS = ["", "@", "chat@", "@prod", "chat@prod@x", "../acme/chat", "chat@../../x", "CHAT", "chat@%2e%2e",
            "Ｃhat", "a" * 100, "chat@" + "0" * 17, "base_model", "chat@nope", None]
HOSTILE_NAMES = ["../x", "%2e%2e", "/abs", "s3://x", "Ｘ", "a" * 100, "a.b", "a/b", "", "x\0"]


def test_malformed_or_missing_refs_are_not_found(adapters):
    adapters.publish("acme", "chat", adapter_files(), uploader="a")
    for ref in BAD_REFS:  # one bucket for all: a fresh one per case costs seconds
        with pytest.raises(ModelNotFound):
            adapters.resolve("acme", ref)


def test_hostile_adapter_names(adapters, store):
    for name in HOSTILE_NAMES:
        with pytest.raises(InvalidName):
            adapters.publish("acme", name, adapter_files(), uploader="a")
        with pytest.raises(InvalidName):
            adapters.get_adapter("acme", name)
        with pytest.raises(InvalidName):
            adapters.publish(name, "chat", adapter_files(), uploader="a")
        with pytest.raises(ModelNotFound):
            adapters.resolve("acme", name)
        with pytest.raises(ModelNotFound):
            adapters.resolve(name, "chat")
    assert store.list("") == []


def test_invalid_adapter_leaves_nothing(adapters, store):
    with pytest.raises(InvalidAdapter):
        adapters.publish("acme", "chat", adapter_files(rank=32), uploader="a")
    assert store.list("") == []


def test_list_adapters(adapters):
    adapters.publish("acme", "zeta", adapter_files(seed=1), uploader="a")
    adapters.publish("acme", "alpha", adapter_files(seed=2), uploader="a")
    adapters.publish("beta", "other", adapter_files(seed=3), uploader="b")
    infos = adapters.list_adapters("acme")
    assert [i.name for i in infos] == ["alpha", "zeta"] and all(len(i.versions) == 1 for i in infos)


def test_an_alias_moved_away_and_back_has_a_new_etag(adapters, store):
    """No ABA: a writer holding the ETag of `prod -> v1` must lose after v1 -> v2 -> v1."""
    v1 = adapters.publish("acme", "chat", adapter_files(seed=1), uploader="a").version
    v2 = adapters.publish("acme", "chat", adapter_files(seed=2), uploader="a").version
    adapters.set_alias("acme", "chat", "prod", v1, None)
    key = layout.alias_key("acme", "chat", "prod")
    _, stale_etag = store.get(key)
    adapters.set_alias("acme", "chat", "prod", v2, v1)
    adapters.set_alias("acme", "chat", "prod", v1, v2)
    assert store.get(key)[1] != stale_etag


def test_a_renewal_reads_one_listing_while_nothing_changed(adapters, store, monkeypatch):
    """What a gateway renewing its resolutions reads: one listing per name while its aliases and versions stay
    as they were, and the new answer the moment one changes (alias move, upload, delete)."""
    calls: list[str] = []
    for method in ("get", "list_info", "get_chunks", "head"):
        real = getattr(store, method)
        monkeypatch.setattr(store, method, lambda *a, _r=real, _m=method, **k: calls.append(_m) or _r(*a, **k))
    old = adapters.publish("acme", "chat", adapter_files(seed=1), uploader="a")
    adapters.publish("acme", "other", adapter_files(seed=3), uploader="a")
    adapters.publish("acme", "aliased", adapter_files(seed=4), uploader="a")
    adapters.set_alias("acme", "aliased", "prod", adapters.resolve("acme", "aliased").version, None)
    adapters.set_alias("acme", "aliased", "canary", adapters.resolve("acme", "aliased").version, None)
    refs = [("acme", "chat"), ("acme", f"chat@{old.version}"), ("acme", "aliased"), ("acme", "aliased@canary")]
    calls.clear()
    for ref in refs:
        adapters.resolve(*ref)
    plain, calls[:] = list(calls), []
    answers = {ref: adapters.resolve_tagged(*ref) for ref in refs}
    assert sorted(calls) == sorted(plain)  # a cold resolution reads what `resolve` reads (some in parallel)
    assert answers[("acme", "chat")][0] == old
    calls.clear()
    for ref, known in answers.items():  # the tag of a cold resolution is the one a listing shows
        assert adapters.resolve_tagged(*ref, known) is known
    assert calls == ["list_info"] * len(answers)

    new = adapters.publish("acme", "chat", adapter_files(seed=2), uploader="a")
    known = adapters.resolve_tagged("acme", "chat", answers[("acme", "chat")])
    assert known[0] == new  # newest version
    adapters.set_alias("acme", "chat", "prod", old.version, None)
    known = adapters.resolve_tagged("acme", "chat", known)
    assert known[0] == old  # the prod alias
    adapters.set_alias("acme", "chat", "prod", new.version, old.version)
    assert adapters.resolve_tagged("acme", "chat", known)[0] == new  # the alias moved
    canary = answers[("acme", "aliased@canary")]
    adapters.set_alias("acme", "aliased", "canary", new_aliased := adapters.publish(
        "acme", "aliased", adapter_files(seed=5), uploader="a").version, canary[0].version)
    assert adapters.resolve_tagged("acme", "aliased@canary", canary)[0].version == new_aliased
    pinned = answers[("acme", f"chat@{old.version}")]
    adapters.delete_version("acme", "chat", old.version)
    with pytest.raises(ModelNotFound):
        adapters.resolve_tagged("acme", f"chat@{old.version}", pinned)
    with pytest.raises(ModelNotFound):
        adapters.resolve_tagged("acme", "../other", pinned)  # a hostile name lists nothing


def test_an_alias_carries_its_targets_manifest(adapters, store, monkeypatch):
    """Resolving through an alias reads the alias object only (the manifest travels in it); an alias written
    before that (no copy) still resolves; a copy that names another tenant, name or version is never used."""
    v1 = adapters.publish("acme", "chat", adapter_files(seed=1), uploader="a")
    v2 = adapters.publish("acme", "chat", adapter_files(seed=2), uploader="a")
    adapters.set_alias("acme", "chat", "prod", v1.version, None)
    adapters.set_alias("acme", "chat", "canary", v2.version, None)
    gets: list[str] = []
    real_get = store.get
    monkeypatch.setattr(store, "get", lambda key: gets.append(key) or real_get(key))
    assert adapters.resolve("acme", "chat@canary") == v2
    assert gets == [layout.alias_key("acme", "chat", "canary")]
    gets.clear()
    assert adapters.resolve("acme", "chat") == v1  # prod: the alias (the listing and index read beside it)
    assert layout.manifest_key("acme", "chat", v1.version) not in gets

    store.put(layout.alias_key("acme", "chat", "old"), json.dumps({"version": v2.version}).encode())
    assert adapters.resolve("acme", "chat@old") == v2  # no copy: the manifest itself is read

    other = adapters.publish("bob", "chat", adapter_files(seed=3), uploader="b")
    adapters.set_alias("bob", "chat", "prod", other.version, None)
    raw, _ = real_get(layout.alias_key("acme", "chat", "prod"))
    store.put(layout.alias_key("bob", "chat", "stolen"), raw)  # acme's alias object under bob's name
    with pytest.raises(ModelNotFound):
        adapters.resolve("bob", "chat@stolen")  # bob has no such version: acme's copy is not used
    forged = json.loads(raw) | {"version": other.version}
    store.put(layout.alias_key("bob", "chat", "forged"), json.dumps(forged).encode())
    assert adapters.resolve("bob", "chat@forged") == other  # the copy names acme's version: bob's own is read


def test_the_newest_version_comes_from_its_index_and_never_a_stale_one(adapters, store, monkeypatch):
    """`NAME` without prod: the listing, the alias and the newest-version index are read at once and nothing
    after (one round trip); an index that does not match the listing (a crash, a lost race) is never used."""
    v1 = adapters.publish("acme", "chat", adapter_files(seed=1), uploader="a")
    v2 = adapters.publish("acme", "chat", adapter_files(seed=2), uploader="a")
    gets: list[str] = []
    real_get = store.get
    monkeypatch.setattr(store, "get", lambda key: gets.append(key) or real_get(key))
    assert adapters.resolve("acme", "chat") == v2
    assert sorted(gets) == sorted([layout.alias_key("acme", "chat", "prod"), layout.newest_key("acme", "chat")])

    adapters.delete_version("acme", "chat", v2.version)
    assert adapters.resolve("acme", "chat") == v1  # rewritten on delete

    stale, _ = real_get(layout.newest_key("acme", "chat"))
    gets.clear()
    v3 = adapters.publish("acme", "chat", adapter_files(seed=3), uploader="a")
    assert layout.manifest_key("acme", "chat", v1.version) not in gets  # the index as it was, plus v3
    assert adapters.resolve("acme", "chat") == v3
    store.put(layout.newest_key("acme", "chat"), stale)  # left behind: it lists v1 only
    gets.clear()
    assert adapters.resolve("acme", "chat") == v3  # the listing shows v3 too: the manifests decide
    assert layout.manifest_key("acme", "chat", v3.version) in gets

    store.put(layout.newest_key("acme", "chat"), b"not json")
    assert adapters.resolve("acme", "chat") == v3
    other = adapters.publish("bob", "chat", adapter_files(seed=4), uploader="b")
    raw, _ = real_get(layout.newest_key("bob", "chat"))
    store.put(layout.newest_key("acme", "chat"), raw)  # bob's index under acme's name
    assert adapters.resolve("acme", "chat") == v3 and adapters.resolve("bob", "chat") == other

    adapters.delete_version("acme", "chat", v3.version)
    adapters.delete_version("acme", "chat", v1.version)
    with pytest.raises(KeyMissing):
        real_get(layout.newest_key("acme", "chat"))  # no version left: no index
    with pytest.raises(ModelNotFound):
        adapters.resolve("acme", "chat")


def test_an_index_that_cannot_be_written_costs_no_upload_and_no_answer(adapters, store, monkeypatch):
    from common.errors import StorageUnavailable

    v1 = adapters.publish("acme", "chat", adapter_files(seed=1), uploader="a")
    real_put = store.put

    def put(key, data, **kw):
        if key == layout.newest_key("acme", "chat"):
            raise StorageUnavailable("the store refused the index")
        return real_put(key, data, **kw)
    monkeypatch.setattr(store, "put", put)
    v2 = adapters.publish("acme", "chat", adapter_files(seed=2), uploader="a")  # the upload itself succeeds
    assert adapters.resolve("acme", "chat") == v2  # the stale index (v1 only) is not used
    adapters.delete_version("acme", "chat", v2.version)
    assert adapters.resolve("acme", "chat") == v1
