"""The engine benchmark's bookkeeping (no engine): ratios, the report table, and the docs section it rewrites."""

from __future__ import annotations

from dataclasses import asdict

from loadtest.engine_bench import report
from loadtest.engine_bench.config import Mix
from loadtest.engine_bench.run import summarize

MIX = asdict(Mix("decode-heavy", 4, 2, 8))


def sample(rank, adapters, ops, seconds, disabled=None):
    s = {"mix": MIX, "adapters": adapters, "ops": ops, "seconds": seconds, "rank": rank, "worker": None}
    if disabled is not None:
        s["disabled_seconds"] = disabled
    return s


def samples():
    return [sample(None, 0, "none", 1.0), sample(None, 0, "none", 2.0),
            sample(16, 1, "stock", 4.0, 1.0), sample(16, 1, "plugin", 1.25, 1.0),
            sample(16, 1, "stock", 5.0, 2.0), sample(16, 1, "plugin", 2.5, 2.0)]


def test_summarize_pairs_each_run_with_its_own_baseline():
    rows = {(r["rank"], r["ops"]): r for r in summarize(samples())}
    assert rows[(16, "plugin")]["ratios"] == [0.8, 0.8]
    assert rows[(16, "plugin")]["ratio_to_lora_disabled"] == 0.8
    assert rows[(16, "stock")]["ratio_to_lora_disabled"] == (0.25 + 0.4) / 2
    assert rows[(None, "none")]["ratio_to_lora_disabled"] == 1.0
    assert rows[(16, "plugin")]["case"] == "1_adapter" and rows[(16, "plugin")]["plugin"] is True
    assert rows[(16, "stock")]["tok_per_s"] == (40 / 4 + 40 / 5) / 2  # median of 40 tokens / seconds


def test_report_table_and_plot(tmp_path):
    rows = summarize(samples())
    table = report.markdown_table(rows)
    assert "| decode-heavy | 16 | 1 adapter |" in table and "| decode-heavy | - | LoRA disabled |" in table
    report.plot(rows, tmp_path / "engine.png")
    assert (tmp_path / "engine.png").read_bytes()[:4] == b"\x89PNG"


def test_update_docs_keeps_other_sections(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Other\n\nkeep me\n")
    report.update_docs("| old |", doc)
    report.update_docs("| new |", doc)
    text = doc.read_text()
    assert "keep me" in text and "| new |" in text and "| old |" not in text
    assert text.count(report.DOC_START) == 1
