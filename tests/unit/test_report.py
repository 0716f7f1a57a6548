"""loadtest/report.py: the one percentile, the CSV shape and the docs sections every benchmark shares."""

from __future__ import annotations

import csv

import pytest

from loadtest.report import markers, percentile, replace_section, write_csv

pytestmark = pytest.mark.unit


def test_percentile_nearest_rank():
    assert percentile([], 50) is None
    assert percentile([3, 1, 2], 50) == 2
    assert percentile(list(range(101)), 99) == 99
    assert percentile([5.0], 99) == 5.0


def test_csv_has_every_key_once_in_first_seen_order(tmp_path):
    write_csv(tmp_path / "r.csv", [{"a": 1, "skip": 0}, {"b": [1, 2], "a": 2}], skip=("skip",))
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert list(rows[0]) == ["a", "b"] and rows[1] == {"a": "2", "b": "[1, 2]"}


def test_a_section_is_replaced_in_place_or_appended(tmp_path):
    doc = tmp_path / "benchmarks.md"
    start, end = markers("x")
    doc.write_text(f"# B\n\nbefore\n\n{start}\nold\n{end}\n\nafter\n")
    replace_section(doc, "x", "new")
    assert doc.read_text() == f"# B\n\nbefore\n\n{start}\nnew\n{end}\n\nafter\n"
    replace_section(doc, "y", "other")
    assert doc.read_text().endswith(f"{markers('y')[0]}\nother\n{markers('y')[1]}\n") and "new" in doc.read_text()


def test_bucket_percentile_interpolates_inside_the_bucket_like_prometheus():
    from loadtest.report import bucket_percentile

    buckets = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert bucket_percentile(buckets, 50) == pytest.approx(0.1)
    assert bucket_percentile(buckets, 70) == pytest.approx(0.3)  # 20 of the 40 in (0.1, 0.5]
    assert bucket_percentile(buckets, 99) == pytest.approx(0.95)
    assert bucket_percentile({1.0: 9.0, float("inf"): 10.0}, 99) == 1.0  # in +Inf: the largest finite bound
    assert bucket_percentile({0.1: 0.0, float("inf"): 0.0}, 50) is None and bucket_percentile({}, 50) is None
