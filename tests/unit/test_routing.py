"""Bookkeeping of `loraplex bench routing` (the run itself needs engines: see docs/benchmarks.md)."""

from __future__ import annotations

from collections import Counter

from loadtest.routing import lru_model, summarize, zipf_sequence
from loadtest.routing_report import docs_section, markdown, update_docs


def test_zipf_sequence_is_seeded_and_skewed():
    a, b = zipf_sequence(24, 2000, 1.0, seed=3), zipf_sequence(24, 2000, 1.0, seed=3)
    assert a == b and a != zipf_sequence(24, 2000, 1.0, seed=4)
    counts = [n for _, n in Counter(a).most_common()]
    assert set(a) <= set(range(24))
    assert counts[0] > 4 * counts[min(len(counts) - 1, 11)]  # rank 1 vs rank ~12: about 12x expected
    assert Counter(zipf_sequence(4, 4000, 0.0, seed=1)).most_common()[-1][1] > 800  # s=0: uniform


def _res(replica, resident, correct=True, latency=0.1):
    return {"replica": replica, "resident": resident, "correct": correct, "latency_s": latency}


def test_summarize_counts_loads_from_replica_counters():
    before = {"r1": {"loads": 10, "evictions": 6}, "r2": {"loads": 5, "evictions": 1}}
    after = {"r1": {"loads": 12, "evictions": 8}, "r2": {"loads": 6, "evictions": 2}}
    results = [_res("r1", True)] * 6 + [_res("r2", False, correct=False)] * 2
    row = summarize("affinity", results, before, after, wall_s=2.0)
    assert row["adapter_loads"] == 3 and row["loads_per_1k"] == 375.0 and row["evictions"] == 3
    assert row["resident_share"] == 0.75 and row["wrong_answers"] == 2 and row["req_per_s"] == 4.0
    assert row["per_replica_requests"] == {"r1": 6, "r2": 2} and row["replicas_changed"] == []


def test_summarize_flags_a_replica_that_changed_midway():
    row = summarize("affinity", [_res("r3", True)], {"r1": {"loads": 1, "evictions": 0}},
                    {"r3": {"loads": 2, "evictions": 0}}, wall_s=1.0)
    assert row["replicas_changed"] == ["r1", "r3"] and row["adapter_loads"] == 2


REPORT = {"spec": {"replicas": 2, "capacity": 4, "adapters": 24, "zipf_s": 1.0, "requests": 400, "warmup": 100,
                   "concurrency": 4, "max_tokens": 8},
          "machine": {"cpus": 2},
          "rows": [{"mode": "affinity", "loads_per_1k": 20.0, "resident_share": 0.98, "evictions": 8, "req_per_s": 9,
                    "latency_p50_ms": 300, "latency_p99_ms": 900, "wrong_answers": 0},
                   {"mode": "no_affinity", "loads_per_1k": 180.0, "resident_share": 0.82, "evictions": 70,
                    "req_per_s": 8, "latency_p50_ms": 320, "latency_p99_ms": 1000, "wrong_answers": 0}]}


def test_docs_section_states_the_measured_ratio(tmp_path):
    text = docs_section(REPORT, tmp_path)
    assert "| affinity | 20.0 | 98.0% |" in text and "| no affinity | 180.0 | 82.0% |" in text
    assert "9.0× fewer" in text and "loraplex bench routing --replicas 2" in text
    assert markdown(REPORT) in text


def test_update_docs_touches_only_its_section(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# B\n\nintro\n<!-- engine-bench:start -->\nE\n<!-- engine-bench:end -->\n"
                   "<!-- routing:start -->\nold\n<!-- routing:end -->\ntail\n")
    update_docs("new table", doc)
    assert doc.read_text() == ("# B\n\nintro\n<!-- engine-bench:start -->\nE\n<!-- engine-bench:end -->\n"
                               "<!-- routing:start -->\nnew table\n<!-- routing:end -->\ntail\n")
    fresh = tmp_path / "other.md"
    fresh.write_text("# B\nx\n")
    update_docs("t", fresh)
    assert fresh.read_text() == "# B\nx\n\n<!-- routing:start -->\nt\n<!-- routing:end -->\n"


def test_lru_model_affinity_beats_random_routing_and_matches_hand_counts():
    seq = zipf_sequence(24, 3000, 1.0, seed=0)
    aff, rnd = lru_model(seq, "affinity", 4, 2), lru_model(seq, "no_affinity", 4, 2)
    assert aff[0] > rnd[0] + 0.1 and aff[1] < rnd[1]
    # one replica, capacity 2: a b a c a b -> miss miss hit miss(evicts b) hit miss
    assert lru_model([0, 1, 0, 2, 0, 1], "affinity", 2, 1) == (round(2 / 6, 3), round(1000 * 4 / 6, 1))
