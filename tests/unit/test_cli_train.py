"""`loraplex train ...`: run without options, each command uses training/config.py's defaults."""

from __future__ import annotations

import sys
from types import ModuleType

import pytest
import typer
from typer.testing import CliRunner

from loraplex.cli_train import train_app
from training.config import QUICK, CompareSettings, LoraSettings, TrainSettings
from training.recommend import Workload

pytestmark = pytest.mark.unit


def _app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(train_app, name="train")
    return app


def _capture(monkeypatch, module: str, name: str) -> list:
    """Replace `module.name` (a fake module, so nothing heavy is imported) with a function that records its
    arguments and stops the command with a ValueError (the CLI turns it into exit 2)."""
    seen = []

    def stop(*args, **kwargs):
        seen.append((args, kwargs))
        raise ValueError("stopped by the test")

    fake = ModuleType(module)
    setattr(fake, name, stop)
    monkeypatch.setitem(sys.modules, module, fake)
    return seen


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_train_defaults_are_the_config_defaults(monkeypatch, tmp_path, method):
    seen = _capture(monkeypatch, "training.sft", "run_training")
    result = CliRunner().invoke(_app(), ["train", method, "--base", str(tmp_path), "--data", str(tmp_path / "d"),
                                         "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and seen, result.output
    job = seen[0][0][0]
    assert job.lora == LoraSettings()
    assert job.train == TrainSettings.for_method(method)
    assert (job.val_data, job.mix_general, job.resume, job.overwrite) == (None, None, False, False)


def test_full_fine_tuning_has_its_own_learning_rate():
    assert TrainSettings.for_method("full").lr < TrainSettings.for_method("lora").lr == TrainSettings().lr


def test_recommend_defaults_are_the_workload_defaults(monkeypatch):
    import training.recommend

    seen = []

    def stop(workload):
        seen.append(workload)
        raise ValueError("stopped by the test")

    monkeypatch.setattr(training.recommend, "recommend", stop)
    result = CliRunner().invoke(_app(), ["train", "recommend", "--params-b", "7"])
    assert result.exit_code == 2 and seen == [Workload(params_b=7)], result.output


@pytest.mark.parametrize(("args", "expected"), [([], CompareSettings()), (["--quick"], QUICK)])
def test_compare_defaults_are_the_compare_settings(monkeypatch, tmp_path, args, expected):
    seen = _capture(monkeypatch, "training.compare", "run_compare")
    _capture(monkeypatch, "training.compare_report", "write_report")
    _capture(monkeypatch, "training.views", "compare_table")
    result = CliRunner().invoke(_app(), ["train", "compare", "--base", str(tmp_path), "--data", str(tmp_path / "d"),
                                         "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and seen, result.output
    assert seen[0][0][3] == expected
