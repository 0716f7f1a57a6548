"""Every path on every model family of the zoo: train, gate, probe, serve, merge, compose — equal to PEFT.

One vLLM engine per family, shared by that family's tests (module-scoped, parametrized: pytest runs one
family's tests before the next family's engine starts), beside a dedicated engine serving the family's
merged model (started with it, so that the two starts overlap the training). Bases are the zoo's
(training/zoo.py): bf16, sharded, GQA, biases, tied embeddings, fused projections.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from common.peft_format import CONFIG_FILE, WEIGHTS_FILE
from common.procs import free_port, stop_group
from registry.base_check import adapter_fingerprint
from registry.base_spec import BaseModelSpec
from registry.safetensors_header import read_header
from serving.engine import start_engine, wait_engine_ready
from serving.settings import ServingSettings
from tests.e2e.helpers import Stack, start_gateway, upload
from tests.helpers.families import (
    MAX_TOKENS,
    PROMPTS,
    TIE_GAP,
    as_trained_elsewhere,
    attention_targets,
    greedy_gaps,
    peft_adapter,
    reference,
    run_cli,
    train_data,
    train_lora,
)
from training.zoo import FAMILIES, build_zoo_model

pytestmark = pytest.mark.slow
NAMES = list(FAMILIES)


@dataclass
class FamilyRun:
    """One family's base, its trained artifacts, its engines and a gateway (tenant `key`)."""

    family: str
    base: Path
    root: Path
    adapters: dict[str, Path]
    stack: Stack
    key: str
    engine: ServingSettings
    merged: Path
    merged_engine: ServingSettings
    merged_proc: object
    tokenizer: object = None
    versions: dict[str, dict] = field(default_factory=dict)


def _engine(base: Path, log: Path, name: str = "base"):
    port = free_port()
    # fp32 whatever the CPU: answers are compared with an fp32 transformers reference token by token (the CPU
    # engine's auto dtype is bf16 where the CPU has it, which moves more near-ties).
    settings = ServingSettings(base_model=base, base_name=name, engine_url=f"http://127.0.0.1:{port}", max_loras=4,
                               max_cpu_loras=8, engine_dtype="float32")
    return settings, start_engine(settings, port, log)


def _ready(settings: ServingSettings, proc, log: Path) -> None:
    try:
        wait_engine_ready(settings.engine_url, 420, proc)
    except Exception:
        stop_group(proc.pid)
        pytest.fail(f"the vLLM engine for {settings.base_model} did not start:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module", params=NAMES)
def run(request, artifacts_var, seaweed, tmp_path_factory):
    family = request.param
    root = tmp_path_factory.mktemp(f"family-{family}")
    base = build_zoo_model(family, artifacts_var)
    engine, proc = _engine(base, root / "engine.log")  # starts while the adapters train
    merged_proc = None
    try:
        data = train_data(root / "reverse.jsonl")
        adapters = {"all": train_lora(base, data, root / "all", "all-linear"),
                    "attn": train_lora(base, data, root / "attn", attention_targets(family))}
        merged = root / "merged"
        run_cli("train", "merge", "--base", base, "--adapter", adapters["all"], "--out", merged, "--json")
        merged_engine, merged_proc = _engine(merged, root / "merged.log", name="merged")
        run_cli("adapter", "compose", f"{adapters['all']}:0.5", f"{adapters['attn']}:0.5", "--name", "mix",
                "--base", base, "--out", root / "mix", "--method", "cat", "--json")
        adapters["mix"] = root / "mix"
        adapters["foreign"] = as_trained_elsewhere(adapters["all"], root / "foreign")
        _ready(engine, proc, root / "engine.log")
        stack = start_gateway(engine, seaweed.endpoint, base, root / "cache")
        yield FamilyRun(family, base, root, adapters, stack, stack.add_tenant(f"t-{family}"), engine, merged,
                        merged_engine, merged_proc, AutoTokenizer.from_pretrained(str(base)))
        stack.close()
    finally:
        stop_group(proc.pid)
        if merged_proc is not None:
            stop_group(merged_proc.pid)


def complete(stack: Stack, key: str, model: str, prompt: str, logprobs: bool = False) -> dict:
    """One greedy completion through the gateway; its choice (text, and token names with `logprobs`)."""
    body = {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}
    with stack.client(key) as c:
        r = c.post("/v1/completions", json=body | ({"logprobs": 0} if logprobs else {}))
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def answers(run: FamilyRun, model: str, stack: Stack | None = None, key: str | None = None) -> list[str]:
    return [complete(stack or run.stack, key or run.key, model, p)["text"] for p in PROMPTS]


def assert_greedy_like_peft(run: FamilyRun, model: str, adapter: Path | None, stack: Stack | None = None,
                            key: str | None = None) -> list[str]:
    """The served answers to PROMPTS are transformers/PEFT's greedy answers (up to near-ties, TIE_GAP);
    returns their texts."""
    choices = [complete(stack or run.stack, key or run.key, model, p, logprobs=True) for p in PROMPTS]
    vocab = run.tokenizer.get_vocab()
    ids = [[vocab[t] for t in c["logprobs"]["tokens"]] for c in choices]
    for c, i in zip(choices, ids, strict=True):
        assert c["finish_reason"] == "stop" or len(i) == MAX_TOKENS, c
    gaps = greedy_gaps(run.base, adapter, ids)
    texts = [c["text"] for c in choices]
    assert max(gaps) <= TIE_GAP, (model, gaps, texts, reference(run.base, adapter))
    return texts


def test_train_targets_and_fingerprint(run):
    targets = {k: json.loads((run.adapters[k] / CONFIG_FILE).read_text())["target_modules"] for k in ("all", "attn")}
    assert set(targets["attn"]) == set(FAMILIES[run.family].attention_targets)
    assert set(targets["all"]) > set(targets["attn"])  # all-linear: the MLP too
    assert "lm_head" not in targets["all"]
    if run.family == "phi3":  # fused projections are adapted as one module each
        assert {"qkv_proj", "gate_up_proj"} <= set(targets["all"])
    base = BaseModelSpec.from_dir(run.base).fingerprint
    for name in ("all", "attn", "mix"):  # trained (or composed) by loraplex: the base travels with the weights
        assert adapter_fingerprint(read_header(run.adapters[name] / WEIGHTS_FILE)) == base, name
    assert adapter_fingerprint(read_header(run.adapters["foreign"] / WEIGHTS_FILE)) is None


def test_gate_and_probe_accept_each_adapter(run):
    probe = run.stack.gateway.adapters.validator.probes[0]
    for name in ("all", "attn", "mix", "foreign"):
        run.versions[name] = upload(run.stack, run.key, name, run.adapters[name])
        assert probe.last["relative_change"] > probe.min_change  # the probe ran on this architecture
    assert run.versions["mix"]["rank"] == 16  # cat composition: the ranks add up
    assert {run.versions[n]["base_check"] for n in ("all", "attn", "mix")} == {"fingerprint"}
    assert run.versions["foreign"]["base_check"] == "shapes"  # trained elsewhere: the base was not fingerprinted
    assert run.versions["all"]["base_model"]["architecture"] == _architecture(run.family)


def test_adapters_and_base_served_equal_to_peft(run):
    served = {"base": assert_greedy_like_peft(run, "base", None)}
    for name in ("all", "attn", "mix", "foreign"):
        served[name] = assert_greedy_like_peft(run, name, run.adapters[name])
    for name in ("all", "attn"):  # the adapters really change the answers (not served as the base)
        assert served[name] != served["base"], name


def test_mixed_batch_equals_solo(run):
    models = {"all": run.adapters["all"], "attn": run.adapters["attn"], "base": None, "mix": run.adapters["mix"]}
    solo = {(m, p): complete(run.stack, run.key, m, p)["text"] for m in models for p in PROMPTS}
    requests = list(solo) * 2  # every adapter and the base in the same engine batches
    with ThreadPoolExecutor(len(requests)) as pool:
        mixed = list(pool.map(lambda mp: complete(run.stack, run.key, *mp, logprobs=True), requests))
    differing = [(r, c) for r, c in zip(requests, mixed, strict=True) if c["text"] != solo[r]]
    assert len(differing) <= len(requests) // 4, differing  # batching may break a near-tie, rarely
    vocab = run.tokenizer.get_vocab()
    for (model, prompt), choice in differing:  # then still its own model's greedy answer, never another's
        ids = [vocab[t] for t in choice["logprobs"]["tokens"]]
        assert greedy_gaps(run.base, models[model], [ids], [prompt])[0] <= TIE_GAP, (model, prompt, choice)


def test_merged_model_on_a_dedicated_engine(run, seaweed):
    _ready(run.merged_engine, run.merged_proc, run.root / "merged.log")
    routed = run.engine.model_copy(update={"dedicated_engines": {"solo": {
        "model": "merged", "url": run.merged_engine.engine_url}}})
    stack = start_gateway(routed, seaweed.endpoint, run.base, run.root / "cache-merged")
    try:
        solo = stack.add_tenant("solo")
        merged = assert_greedy_like_peft(run, "merged", run.adapters["all"], stack, solo)
        assert merged == answers(run, "all")  # the merged model answers as base + adapter
    finally:
        stack.close()
        stop_group(run.merged_proc.pid)  # not needed any more: frees its cores and memory


def _other(family: str) -> str:
    return NAMES[(NAMES.index(family) + 1) % len(NAMES)]


def _architecture(family: str) -> str:
    return FAMILIES[family].config_class.__name__.replace("Config", "ForCausalLM")


def test_gate_refuses_what_the_engine_cannot_serve(run):
    attention = list(FAMILIES[run.family].attention_targets)
    cases = {"embedding-target": {"target_modules": [attention[0], "lm_head"]},
             "dora": {"target_modules": attention, "use_dora": True}}
    for rule, lora in cases.items():
        body = upload(run.stack, run.key, f"bad-{rule}", peft_adapter(run.base, run.root / rule, **lora), expect=422)
        assert body["error"]["message"].startswith(f"[{rule}]"), body
    # A PEFT adapter (no fingerprint) of a family with other module names (fused or not): refused by name.
    # The zoo's other families have the same widths, so their adapters pass a shapes-only check: for those
    # only the fingerprint tells the bases apart (next test).
    other = "llama" if run.family == "phi3" else "phi3"
    other_adapter = peft_adapter(build_zoo_model(other, run.root / "zoo"), run.root / "other",
                                 target_modules=[FAMILIES[other].attention_targets[0]])  # qkv_proj or q_proj
    body = upload(run.stack, run.key, "other", other_adapter, expect=422)
    assert body["error"]["code"] == "invalid_adapter"
    with run.stack.client(run.key) as c:  # nothing refused became a model
        served = {m["id"] for m in c.get("/v1/models").json()["data"]}
    assert not {"bad-embedding-target", "bad-dora", "other"} & served


def test_foreign_fingerprint_refused_and_other_base_not_served(run, artifacts_var):
    other = _other(run.family)
    other_base = build_zoo_model(other, artifacts_var)
    trained = train_lora(other_base, train_data(run.root / "other.jsonl"), run.root / "trained-other",
                         attention_targets(other))
    message = upload(run.stack, run.key, "trained-other", trained, expect=422)["error"]["message"]
    assert message.startswith("[base-mismatch]")
    assert _architecture(other) in message and _architecture(run.family) in message  # names both bases
    # LORAPLEX_BASE_MODEL changes: a gateway on the same registry refuses the versions validated before.
    from serving.app import create_app
    from serving.embedded import serve_in_thread
    from serving.gateway import Gateway
    from serving.operator_app import create_operator_app

    port, admin_port = free_port(), free_port()
    moved = run.stack.gateway.settings.model_copy(update={"base_model": other_base, "noop_probe": False,
                                                          "gateway_port": port, "admin_port": admin_port})
    gateway = Gateway.from_settings(moved)
    server = serve_in_thread(create_app(gateway), port, operator=create_operator_app(gateway), admin_port=admin_port)
    try:
        with Stack(f"http://127.0.0.1:{port}", "unused").client(run.key) as c:
            r = c.post("/v1/completions", json={"model": "all", "prompt": PROMPTS[0], "max_tokens": 1})
        assert r.status_code == 409, r.text
        error = r.json()["error"]
        assert error["code"] == "base_mismatch"
        assert _architecture(other) in error["message"] and _architecture(run.family) in error["message"]
    finally:
        server.should_exit = True
