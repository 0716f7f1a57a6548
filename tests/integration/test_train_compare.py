"""`loraplex train compare --quick`: every row carries every contract key; reports and plots are written."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from training.compare import ROW_KEYS
from training.tasks import dataset
from training.tiny import TinyShape, create_model, save_base
from training.tokenizer import save_tokenizer

pytestmark = pytest.mark.integration

TINY = TinyShape(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_positions=64)


def _jsonl(path, task, n, seed):
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in dataset(task, n, seed)))
    return path


def test_compare_quick_writes_every_contract_key(tmp_path):
    from loraplex.cli_train import train_app

    base = tmp_path / "base"
    tokenizer = save_tokenizer(base)
    save_base(create_model(tokenizer, seed=0, shape=TINY), tokenizer, base)
    data, echo = _jsonl(tmp_path / "reverse.jsonl", "reverse", 150, 3), _jsonl(tmp_path / "echo.jsonl", "echo", 40, 4)
    app = typer.Typer()
    app.add_typer(train_app, name="train")
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["train", "compare", "--base", str(base), "--data", str(data), "--out",
                                          str(tmp_path / "cmp"), "--retention-data", str(echo), "--quick", "--json"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert rows == json.loads(result.stdout)
    assert [(r["method"], r["rank"]) for r in rows] == [("full", None), ("lora", 4), ("lora", 8), ("lora", 16),
                                                         ("lora", 32), ("qlora", 16)]
    for row in rows:
        assert set(ROW_KEYS) <= set(row), row
    trained = [r for r in rows if not r["skipped"]]
    assert all(r["trainable_params"] > 0 and r["artifact_mb"] > 0 and r["switch_time_s"] > 0 for r in trained)
    assert len({r["tokens_seen"] for r in trained}) == 1  # same compute for every variant
    lora = [r for r in trained if r["method"] == "lora"]
    assert [r["trainable_params"] for r in lora] == sorted(r["trainable_params"] for r in lora)
    assert trained[0]["trainable_pct"] == 100.0 and all(r["artifact_mb"] < trained[0]["artifact_mb"] for r in lora)
    if not torch.cuda.is_available():
        assert rows[-1]["skipped"] and "CUDA" in rows[-1]["reason"]
    for name in ("compare.md", "quality.png", "cost.png"):
        assert (tmp_path / "cmp" / name).stat().st_size > 0
