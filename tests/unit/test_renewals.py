"""Pure logic of remembered answers (serving/renewals.py): when one holds, and which generation stamps a first one."""

from __future__ import annotations

import time

from serving import renewals
from serving.renewals import FULL_CHECK_S, Checked, GenerationWatch


def test_an_answer_holds_at_its_generation_until_its_full_check(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    due = [Checked.now("v", "tag", "g1").full_check_at - now[0] for _ in range(200)]
    assert all(FULL_CHECK_S / 2 <= d <= FULL_CHECK_S for d in due)
    assert max(due) - min(due) > FULL_CHECK_S / 4  # spread: names resolved together are not checked together
    checked = Checked.now("v", "tag", "g1")
    assert checked.holds("g1") and not checked.holds("g2") and not checked.holds(None)
    now[0] = checked.full_check_at
    assert not checked.holds("g1")


class _Store:
    def __init__(self):
        self.bumped, self.reads = None, 0

    def generation(self):
        self.reads += 1
        return "read"


def test_a_first_answer_takes_the_newest_generation_known_read_or_written(monkeypatch):
    now = [50.0]
    monkeypatch.setattr(renewals.time, "monotonic", lambda: now[0])
    store = _Store()
    watch = GenerationWatch(store)
    assert watch.latest() is None
    store.bumped = ("own-write", 49.0)
    assert watch.latest() == "own-write"  # nothing read yet: this process's own write
    assert watch.current() == "read" and store.reads == 1
    assert watch.latest() == "read"  # read after the write
    now[0] = 500.0
    assert watch.fresh() is None and watch.latest() == "read"  # however old: a safe stamp, never a read
    store.bumped = ("newer-write", 400.0)
    assert watch.latest() == "newer-write" and store.reads == 1
    first = watch.renewal(None, lambda: ("manifest", "tag"))()
    assert first.generation == "newer-write" and store.reads == 1
