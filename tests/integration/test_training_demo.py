"""The real demo build: base and adapters answer their tasks, and all four models answer differently.

Uses the session `demo` fixture (tests/conftest.py): built once into var/ (or $LORAPLEX_TEST_VAR)
and reused while its stamps match the recipe.
"""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from common.peft_format import ADAPTER_FILES, CONFIG_FILE
from tests.helpers.hf_reference import load_merged, merged_greedy
from training.builders import word_pools
from training.demo import BASE_NAME, DEMO_TENANTS, DEMO_WORDS, build_demo, demo_prompt
from training.demo_loop import accuracy
from training.demo_recipe import BASE_TASK, HELD_OUT_WORDS, QUALITY_FLOOR, TRAIN_WORDS
from training.lora import BASE_MODEL_NAME
from training.tasks import completion
from training.tokenizer import build_tokenizer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_TOKENS = 16


@pytest.fixture(scope="module")
def outputs(demo) -> dict[str, list[str]]:
    """Greedy completions of the demo prompts by the base (key BASE_NAME) and by each adapter."""
    prompts = [demo_prompt(w) for w in DEMO_WORDS]
    got = {BASE_NAME: merged_greedy(demo.base_dir, None, prompts, MAX_TOKENS)}
    for tenant in DEMO_TENANTS:
        got[tenant["adapter"]] = merged_greedy(demo.base_dir, demo.adapter_dirs[tenant["adapter"]], prompts, MAX_TOKENS)
    return got


def test_base_echoes(outputs):
    assert outputs[BASE_NAME] == [completion("echo", w) for w in DEMO_WORDS]


@pytest.mark.parametrize("tenant", DEMO_TENANTS, ids=lambda t: t["adapter"])
def test_adapter_answers_its_task(outputs, tenant):
    assert outputs[tenant["adapter"]] == [completion(tenant["task"], w) for w in DEMO_WORDS]


def test_all_models_differ_on_every_word(outputs):
    for i, word in enumerate(DEMO_WORDS):
        answers = {name: got[i] for name, got in outputs.items()}
        assert len(set(answers.values())) == len(answers), (word, answers)


def test_artifacts_are_servable(demo):
    config = json.loads((demo.base_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["max_position_embeddings"] >= 256
    assert "_name_or_path" not in config
    for tenant in DEMO_TENANTS:
        path = demo.adapter_dirs[tenant["adapter"]]
        assert sorted(p.name for p in path.iterdir()) == sorted(ADAPTER_FILES)
        adapter = json.loads((path / CONFIG_FILE).read_text())
        assert adapter["base_model_name_or_path"] == BASE_MODEL_NAME and adapter["r"] <= 16
    for name, stamp in demo.stamps.items():
        assert stamp["held_out_accuracy"] >= QUALITY_FLOOR and stamp["demo_accuracy"] == 1.0, (name, stamp)


@pytest.mark.parametrize("name", [BASE_NAME] + [t["adapter"] for t in DEMO_TENANTS])
def test_saved_models_reach_the_quality_goal(demo, name):
    # Measured again from the files on disk (adapter merged into the base), not read from the stamp.
    task = {t["adapter"]: t["task"] for t in DEMO_TENANTS}.get(name, BASE_TASK)
    model = load_merged(demo.base_dir, demo.adapter_dirs.get(name))
    _, held_out = word_pools(TRAIN_WORDS, HELD_OUT_WORDS)
    got = accuracy(model, build_tokenizer(), task, held_out)
    assert got >= QUALITY_FLOOR and got == pytest.approx(demo.stamps[name]["held_out_accuracy"], abs=0.01), name


def test_second_build_reuses_everything(demo):
    again = build_demo(demo.base_dir.parent.parent, console=Console(quiet=True))
    assert again.built == [] and again.stamps == demo.stamps
