"""Renewing what the gateway remembers (resolved names, authenticated keys) at one shared read while nothing changed.

Every write of an object that a resolution or an authentication reads gives the registry's generation object a
new ETag (registry/store.py, `layout.watched`). A remembered answer keeps the generation it was checked under;
renewing it while the generation is unchanged costs nothing more than the generation's read, shared by all
renewals of the moment (`GenerationWatch`), and nothing at all while that read is fresh: the renewal is then
decided in line on the event loop, no task, no thread (`fresh`). With a thousand names and a hundred keys in use,
checking each one on its own every 2 s cost the gateway a millisecond of CPU per request and 15% of the
throughput of one engine; a task and a thread hop per renewal, another 0.5 ms.

A first answer (a cold resolution, a new key) takes the latest generation this process knows, however old: the
one it read last, or the one its own last write gave (an upload through this gateway): a write after it changes
the generation, so the answer is checked again; a stamp from before a write costs one needless check, never a
stale answer. Without it, a thousand names' first renewals were each a full check (a listing); with only a read
less than 0.25 s old to go by, so was every name first resolved on a gateway that had no renewal due just then.

Answers are still checked one by one when the generation changed, when none is known, and at least every
`FULL_CHECK_S` (a writer that died between its write and the generation's leaves answers stale that long at
most; its client got no answer, and a retry's write bumps the generation), at a random point of the second half
of that span: every 60 s, as before, cost a listing per name in use each minute (~17 a second with a thousand
names), all due together after a deploy.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from registry.store import ObjectStore

FULL_CHECK_S = 300.0


@dataclass(frozen=True)
class Checked:
    """A remembered answer (a manifest, a tenant), its resolution tag, the generation it was checked under, and
    when it is checked on its own whatever the generation says (monotonic time)."""

    value: Any
    tag: str | None
    generation: str | None
    full_check_at: float

    @classmethod
    def now(cls, value: Any, tag: str | None, generation: str | None) -> Checked:
        return cls(value, tag, generation, time.monotonic() + FULL_CHECK_S * random.uniform(0.5, 1.0))

    def holds(self, generation: str | None) -> bool:
        """Still the answer, with the registry at `generation`?"""
        return generation is not None and generation == self.generation and time.monotonic() < self.full_check_at


class GenerationWatch:
    """The registry's generation, read at most every MAX_AGE_S however many renewals ask (thread-safe)."""

    MAX_AGE_S = 0.25  # a change shows this much later than with a check of its own (renewals wait 2 s anyway)

    def __init__(self, store: ObjectStore):
        self.store = store
        self._lock = threading.Lock()
        self._value: tuple[str | None, float] = (None, float("-inf"))

    def latest(self) -> str | None:
        """The newest generation this process knows, read or written by itself (`ObjectStore.bumped`), however
        old; never reads. A safe stamp for an answer fetched after this call: a write since changes the
        generation, and the answer is checked again."""
        value, at = self._value
        bumped = self.store.bumped
        return bumped[0] if bumped is not None and bumped[1] > at else value

    def fresh(self) -> str | None:
        """The generation if read less than MAX_AGE_S ago, else None; never reads (for the event loop)."""
        value, at = self._value
        return value if time.monotonic() - at <= self.MAX_AGE_S else None

    def current(self) -> str | None:
        with self._lock:
            value, at = self._value
            if time.monotonic() - at > self.MAX_AGE_S:
                value = self.store.generation()
                self._value = (value, time.monotonic())
            return value

    def holds(self, checked: Checked) -> bool:
        """Is `checked` still the answer by the generation read moments ago? Never reads (for the event loop)."""
        return checked.holds(self.fresh())

    def renewal(self, known: Checked | None, fetch: Callable[[], tuple[Any, str | None]]) -> Callable[[], Checked]:
        """The renewal of `known` (None: a first answer), run in a thread: `known` itself while the generation it
        was checked under is current, else `fetch()` ((value, tag)) stamped with the generation read before it
        (for a first answer the latest known, no extra round trip)."""
        def renew() -> Checked:
            generation = self.latest() if known is None else self.current()
            if known is not None and known.holds(generation):
                return known
            value, tag = fetch()
            return Checked.now(value, tag, generation)
        return renew
