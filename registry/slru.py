"""A segmented LRU bounded by bytes (and optionally by count): the eviction policy of every residency tier.

New entries start in a probation segment; a second use promotes one to the protected segment, which may
fill at most `protected_share` of the byte budget and of the count budget (its least recent entries fall back
to probation). A victim is taken from probation first, so a burst of one-off entries (a scan) evicts other
one-off entries, never the popular set (SLRU, as in Karedla et al. 1994; the probation/protected split of 2Q).

Pure bookkeeping, no I/O and no locking: the owner (the engine residency on the event loop, the disk
cache under its lock) serializes calls and does the actual unloading or deleting of what `victims` names.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class TierUsage:
    """What a tier holds now: entries and bytes, and the budgets they are held to (count 0: none)."""

    count: int
    bytes: int
    max_count: int
    max_bytes: int
    protected_bytes: int
    pinned: int


class SegmentedLRU:
    """Keys with sizes in two LRU segments (least recent first), bounded by `max_bytes` and `max_count`.

    Args:
        max_bytes: the byte budget.
        max_count: the entry budget (0: none).
        protected_share: share of `max_bytes` the protected (used twice or more) segment may hold.
    """

    def __init__(self, max_bytes: int, max_count: int = 0, protected_share: float = 0.8):
        if not 0 < protected_share < 1:
            raise ValueError("protected_share is a share of the budget, strictly between 0 and 1, e.g. 0.8")
        self.max_bytes, self.max_count, self.protected_share = max_bytes, max_count, protected_share
        self._probation: OrderedDict[str, int] = OrderedDict()
        self._protected: OrderedDict[str, int] = OrderedDict()
        self._bytes = 0
        self._protected_bytes = 0

    def __contains__(self, key: str) -> bool:
        return key in self._probation or key in self._protected

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)

    def __iter__(self) -> Iterator[str]:
        """Keys in eviction order: probation least recent first, then protected least recent first."""
        yield from list(self._probation)
        yield from list(self._protected)

    @property
    def bytes(self) -> int:
        return self._bytes

    def size(self, key: str) -> int:
        return self._probation.get(key, self._protected.get(key, 0))

    def add(self, key: str, size: int, protected: bool = False) -> None:
        """Insert `key` (most recent of probation, or of protected: an entry known to be popular); an
        existing key is resized and counts as used."""
        if key in self:
            self.remove(key)
            protected = True
        segment = self._protected if protected else self._probation
        segment[key] = size
        self._bytes += size
        if protected:
            self._protected_bytes += size
            self._rebalance()

    def touch(self, key: str) -> None:
        """A use of `key`: most recent of protected (promoted from probation on its second use)."""
        if key in self._protected:
            self._protected.move_to_end(key)
        elif key in self._probation:
            size = self._probation.pop(key)
            self._protected[key] = size
            self._protected_bytes += size
            self._rebalance()

    def remove(self, key: str) -> int:
        """Forget `key`; returns its size (0 if absent)."""
        if key in self._probation:
            size = self._probation.pop(key)
        elif key in self._protected:
            size = self._protected.pop(key)
            self._protected_bytes -= size
        else:
            return 0
        self._bytes -= size
        return size

    def over_budget(self, extra_bytes: int = 0, extra_count: int = 0) -> bool:
        """Whether holding `extra_bytes` in `extra_count` more entries would pass a budget."""
        if self.max_count and len(self) + extra_count > self.max_count:
            return True
        return self._bytes + extra_bytes > self.max_bytes

    def victims(self, extra_bytes: int = 0, extra_count: int = 0,
                keep: Callable[[str], bool] = lambda _k: False) -> list[str]:
        """Keys to drop (in order) so that `extra_bytes` in `extra_count` entries fit; entries for which
        `keep` is true (pinned, in use) are skipped. Fewer than needed when the kept ones fill the budget:
        the caller then holds more than the budget for a while rather than break what is kept."""
        out, freed, count = [], 0, len(self)
        for key in self:
            if not self._needs(self._bytes - freed + extra_bytes, count + extra_count):
                break
            if keep(key):
                continue
            out.append(key)
            freed += self.size(key)
            count -= 1
        return out

    def usage(self, pinned: int = 0) -> TierUsage:
        return TierUsage(len(self), self._bytes, self.max_count, self.max_bytes, self._protected_bytes, pinned)

    def _needs(self, total: int, count: int) -> bool:
        return total > self.max_bytes or bool(self.max_count and count > self.max_count)

    def _rebalance(self) -> None:
        """Demote the least recent protected entries to probation (most recent end) while it is over its share."""
        limit = self.max_bytes * self.protected_share
        most = int(self.max_count * self.protected_share) if self.max_count else 0
        while len(self._protected) > 1 and (self._protected_bytes > limit or (most and len(self._protected) > most)):
            key, size = self._protected.popitem(last=False)
            self._protected_bytes -= size
            self._probation[key] = size
