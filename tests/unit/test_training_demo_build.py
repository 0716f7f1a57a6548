"""The demo build's bookkeeping (reuse, stamps, atomic replacement), with the training steps faked;
and training until a quality goal, on a model small enough to train in a unit test."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

import training.demo as demo
from common.peft_format import ADAPTER_FILES, CONFIG_FILE, WEIGHTS_FILE
from training.demo_loop import GoalNotReached, Recipe
from training.demo_recipe import recipe_fingerprint
from training.staged_build import staged_dir

pytestmark = pytest.mark.unit


class FakeTraining:
    """Stands in for build_base/build_adapter: writes placeholder files, counts calls."""

    def __init__(self):
        self.calls: list[str] = []
        self.fail_on: str | None = None
        self.base_version = 0

    def base(self, out_dir, shape, recipe, words, held_out, floor, on_step=None):
        self.calls.append(demo.BASE_NAME)
        self.base_version += 1
        for name in demo.BASE_FILES:
            (out_dir / name).write_text(f"{name} v{self.base_version}")
        return {"held_out_accuracy": 1.0, "demo_accuracy": 1.0, "steps": recipe.steps, "train_seconds": 1.0}

    def adapter(self, base_dir, out_dir, task, recipe, words, held_out, floor, on_step=None):
        self.calls.append(task)
        (out_dir / "half-written").write_text("x")
        if task == self.fail_on:
            raise RuntimeError("interrupted")
        (out_dir / "half-written").unlink()
        for name in ADAPTER_FILES:
            (out_dir / name).write_text(f"{task} on {(base_dir / 'model.safetensors').read_text()}")
        return {"held_out_accuracy": 0.99, "demo_accuracy": 1.0, "steps": recipe.steps, "train_seconds": 1.0}


@pytest.fixture
def fake(monkeypatch):
    fake = FakeTraining()
    monkeypatch.setattr(demo, "build_base", fake.base)
    monkeypatch.setattr(demo, "build_adapter", fake.adapter)
    monkeypatch.setattr(demo, "word_pools", lambda n, m: (["abc"], ["xyz"]))
    return fake


def build(var, **kw):
    # In this process (build_demo would start a reproducible one, where the fakes are not installed).
    return demo.build_here(var, console=Console(quiet=True), **kw)


ALL = [demo.BASE_NAME] + [t["task"] for t in demo.DEMO_TENANTS]


def test_builds_everything_then_reuses(tmp_path, fake):
    first = build(tmp_path)
    assert fake.calls == ALL and first.built == [demo.BASE_NAME] + [t["adapter"] for t in demo.DEMO_TENANTS]
    assert first.base_dir == tmp_path / "models" / "demo-base"
    for tenant in demo.DEMO_TENANTS:
        path = first.adapter_dirs[tenant["adapter"]]
        assert path == tmp_path / "adapters" / "demo" / tenant["adapter"]
        assert sorted(p.name for p in path.iterdir()) == sorted(ADAPTER_FILES)
    assert not (tmp_path / demo.SCRATCH).exists()
    second = build(tmp_path)
    assert fake.calls == ALL and second.built == [] and second.stamps == first.stamps


def test_missing_stamp_or_file_rebuilds_only_that_adapter(tmp_path, fake):
    build(tmp_path)
    (tmp_path / "adapters" / "demo" / "reverse.build.json").unlink()
    (tmp_path / "adapters" / "demo" / "caesar" / WEIGHTS_FILE).unlink()
    again = build(tmp_path)
    assert again.built == ["reverse", "caesar"]


def test_new_base_rebuilds_adapters(tmp_path, fake):
    build(tmp_path)
    (tmp_path / "models" / "demo-base" / "build.json").unlink()
    again = build(tmp_path)
    assert again.built == [demo.BASE_NAME] + [t["adapter"] for t in demo.DEMO_TENANTS]
    adapter = again.adapter_dirs["shout"] / CONFIG_FILE
    assert adapter.read_text().endswith("v2")  # trained on the new base


def test_changed_recipe_rebuilds(tmp_path, fake, monkeypatch):
    build(tmp_path)
    monkeypatch.setitem(demo.ADAPTER_RECIPES, "upper", Recipe(steps=1, lr=1e-3))
    assert build(tmp_path).built == ["shout"]
    assert build(tmp_path, force=True).built == [demo.BASE_NAME, "reverse", "shout", "caesar"]


def test_interrupted_adapter_build_never_looks_complete(tmp_path, fake):
    build(tmp_path)
    (tmp_path / "adapters" / "demo" / "shout.build.json").unlink()
    fake.fail_on = "upper"
    with pytest.raises(RuntimeError):
        build(tmp_path)
    assert not (tmp_path / "adapters" / "demo" / "shout.build.json").exists()
    leftovers = list((tmp_path / demo.SCRATCH).glob("*")) if (tmp_path / demo.SCRATCH).exists() else []
    assert leftovers == []
    fake.fail_on = None
    assert build(tmp_path).built == ["shout"]


def test_stamps_record_recipe_and_base(tmp_path, fake):
    result = build(tmp_path)
    base = json.loads((result.base_dir / "build.json").read_text())
    assert base["recipe"] == demo.recipe_fingerprint() and len(base["model_sha256"]) == 64
    stamp = json.loads((tmp_path / "adapters" / "demo" / "reverse.build.json").read_text())
    assert stamp["base_sha256"] == base["model_sha256"] and stamp["task"] == "reverse"
    assert demo.recipe_fingerprint("reverse") != demo.recipe_fingerprint("upper")


def test_staged_dir_replaces_only_on_success(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old").write_text("old")
    with pytest.raises(ValueError):
        with staged_dir(final, tmp_path / "scratch") as tmp:
            (tmp / "new").write_text("new")
            raise ValueError("boom")
    assert [p.name for p in final.iterdir()] == ["old"]
    with staged_dir(final, tmp_path / "scratch") as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new"]
    assert list((tmp_path / "scratch").iterdir()) == []


def test_demo_data_is_valid():
    from common.names import NAME_RE

    for tenant in demo.DEMO_TENANTS:
        assert all(NAME_RE.fullmatch(tenant[k]) for k in ("tenant", "adapter"))
        assert tenant["task"] in demo.ADAPTER_RECIPES
    assert demo.demo_prompt("hello") == "word: hello\nanswer:"
    assert len({t["adapter"] for t in demo.DEMO_TENANTS}) == len(demo.DEMO_TENANTS)


def test_fingerprint_covers_the_quality_goal_and_the_kernels(monkeypatch):
    import training.demo_recipe as recipe

    before = {task: recipe_fingerprint(task) for task in ("echo", "reverse")}
    monkeypatch.setattr(recipe, "QUALITY_FLOOR", 0.5)
    assert all(recipe_fingerprint(task) != fp for task, fp in before.items())
    monkeypatch.undo()
    monkeypatch.setitem(recipe.reproducible.REPRODUCIBLE_ENV, "MKL_CBWR", "AUTO")
    assert all(recipe_fingerprint(task) != fp for task, fp in before.items())


def test_complete_artifacts_are_reused_without_a_build_process(tmp_path, fake, monkeypatch):
    build(tmp_path)
    monkeypatch.setattr(demo.reproducible, "run_module", lambda *a: pytest.fail("started a build process"))
    assert demo.build_demo(tmp_path, console=Console(quiet=True)).built == []


def test_incomplete_artifacts_are_built_in_a_reproducible_process(tmp_path, fake, monkeypatch):
    started = []
    monkeypatch.setattr(demo.reproducible, "run_module", lambda module, args: started.append((module, args)))
    with pytest.raises(demo.DemoBuildError, match="not complete"):  # the stand-in built nothing
        demo.build_demo(tmp_path, force=True, console=Console(quiet=True))
    (module, args), = started
    assert module == "training.demo" and args[:2] == ["--var", str(tmp_path)] and "--force" in args


def test_a_model_below_the_goal_fails_the_build_with_its_name(tmp_path, fake, monkeypatch, capsys):
    def short(*args):
        raise GoalNotReached("held-out accuracy 90.0% < 97% after 1200 steps")

    monkeypatch.setattr(demo, "build_adapter", short)
    monkeypatch.setattr(demo.reproducible, "active", lambda: True)  # build in this process, with the fakes
    result = tmp_path / "result.json"
    assert demo.main(["--var", str(tmp_path), "--quiet", "--result", str(result)]) == 2
    error = json.loads(result.read_text())["error"]
    assert "reverse (reverse) did not reach the quality goal" in error and "ADAPTER_RECIPES" in error
    assert error in capsys.readouterr().err
    assert not (tmp_path / "adapters" / "demo" / "reverse.build.json").exists()


@pytest.fixture(scope="module")
def tiny():
    from training.tiny import TinyShape, create_model
    from training.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    shape = TinyShape(hidden_size=32, num_heads=1, intermediate_size=64, num_layers=1)
    return lambda: create_model(tokenizer, seed=0, shape=shape), tokenizer


@pytest.mark.parametrize("unmet_checks, expected_steps", [(0, 4), (2, 8)])
def test_training_goes_on_until_the_goal_is_met(tiny, unmet_checks, expected_steps):
    from training.demo_loop import train

    make, tokenizer = tiny
    checks: list[bool] = []

    def goal():
        checks.append(True)
        return "not yet" if len(checks) <= unmet_checks else None

    recipe = Recipe(steps=4, lr=1e-3, batch_size=4, warmup=1, eval_every=2)
    loss, steps = train(make(), tokenizer, "echo", ["abc", "def", "ghi"], recipe, goal=goal)
    assert steps == expected_steps and len(checks) == unmet_checks + 1 and loss > 0


def test_training_that_never_meets_its_goal_stops_at_the_limit(tiny):
    from training.demo_loop import train

    make, tokenizer = tiny
    taken: list[int] = []
    recipe = Recipe(steps=4, lr=1e-3, batch_size=4, warmup=1, eval_every=2, max_steps=6)
    with pytest.raises(GoalNotReached, match="still bad after 6 steps"):
        train(make(), tokenizer, "echo", ["abc", "def"], recipe, lambda s, _: taken.append(s), lambda: "still bad")
    assert taken == list(range(6))
