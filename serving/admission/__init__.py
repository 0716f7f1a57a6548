"""Admission control: when a tenant's request may go to the engine.

- `quotas`: per-tenant requests and tokens per minute and concurrent requests (429 + Retry-After).
- `fair_queue`: engine slots and the bounded queue in front of them, granted in tenant-fair (VTC) order,
  work-conserving; a tenant that overloads the engine gets caps and pacing and leaves headroom for the
  others; longest-queue drop when full (503).
- `demand`: what each tenant asked for and was granted lately, which tells a heavy tenant.
- `capacity`: what the engine serves with every slot busy, which tells an overload.
- `guard`: the slowdown guard, the ceiling on a heavy tenant's slots steered by the engine's slowdown.

`Admission` puts them together for the gateway, and refuses everything new while it drains (shutdown).
All of it runs on the gateway's event loop and is not thread-safe.
"""

from __future__ import annotations

import asyncio
import time

from common.errors import Overloaded
from serving import metrics
from serving.admission.fair_queue import FairQueue
from serving.admission.guard import SlowdownGuard
from serving.admission.quotas import Charge, QuotaLedger, Quotas

__all__ = ["Admission", "Charge", "Draining", "Quotas"]


class Draining(Overloaded):
    """The gateway is shutting down: it finishes what it admitted and takes nothing new."""

    code = "shutting_down"


class Admission:
    """Decides when a request may go to the engine: quota check, then a slot from the fair queue.

    Args:
        max_inflight: requests forwarded to the engine at once (beyond it they wait, fairly ordered).
        max_queue: waiting requests over all tenants; beyond it new requests get 503 + Retry-After (in fair
            mode a newcomer whose tenant waits less pushes out the newest request of the longest queue).
        fair: VTC order and per-tenant headroom; False: plain first-come first-served (the baseline
            the fairness benchmark compares against).
        active_window_s: how long after its last request a tenant still counts as active (keeps its reserve
            while another tenant overloads the engine).
        share_cap: fair mode, while several tenants are active: the slots of a tenant that overloads the
            engine are capped at this multiple of its equal share of the window (0: no cap).
        slowdown_tolerance: fair mode: the slowdown guard holds an overloading tenant back while the engine's
            time per output token is more than this multiple of its light-load value (0: off).
        heavy_window_s: the window over which demand is compared to tell a heavy tenant.
    """

    def __init__(self, max_inflight: int, max_queue: int, fair: bool = True, active_window_s: float = 5.0,
                 share_cap: float = 0.0, slowdown_tolerance: float = 0.0, heavy_window_s: float = 20.0):
        guard = SlowdownGuard(max_inflight, slowdown_tolerance if fair else 0.0)
        self.queue = FairQueue(max_inflight, max_queue, guard, fair, active_window_s, share_cap, heavy_window_s)
        self.quotas = QuotaLedger()
        self.closed = False

    @classmethod
    def from_settings(cls, settings) -> Admission:
        """The admission a gateway's `ServingSettings` describe (one place that maps settings to arguments)."""
        return cls(settings.max_inflight, settings.max_queue, settings.fair_admission,
                   settings.fair_active_window_s, settings.fair_share_cap, settings.fair_slowdown_tolerance)

    @property
    def guard(self) -> SlowdownGuard:
        """The fair queue's slowdown guard; settable, so that a fresh admission can carry on an earlier one's
        (what it learned is about the engine, not the tenants)."""
        return self.queue.guard

    @guard.setter
    def guard(self, guard: SlowdownGuard) -> None:
        self.queue.guard = guard

    @property
    def inflight(self) -> int:
        return self.queue.inflight

    @property
    def queued(self) -> int:
        return self.queue.queued

    @property
    def idle(self) -> bool:
        return self.queue.idle

    @property
    def running(self) -> dict[str, int]:
        """Tenant -> its requests holding a slot now."""
        return self.queue.running

    @property
    def active(self) -> dict[str, int]:
        """Tenant -> its requests waiting or running now."""
        return self.queue.active

    @property
    def counters(self) -> dict[str, float]:
        """Tenant -> its virtual token counter (tokens served, as VTC orders by)."""
        return self.queue.counters

    def check_open(self, tenant: str, label: str = metrics.OTHER) -> None:
        if self.closed:
            metrics.REJECTED.labels(metrics.LABELS.tenant(tenant), label, "503", "draining").inc()
            raise Draining("the gateway is shutting down and takes no new requests: retry in a few seconds "
                           "(another replica, or this one after its restart, will answer)", retry_after=5)

    def check_quota(self, tenant: str, quotas: Quotas, est_tokens: int, label: str = metrics.OTHER) -> Charge:
        """429 with Retry-After if this request would exceed one of the tenant's limits; otherwise the request
        is counted and its estimated tokens charged (`Charge.settle` corrects them once served)."""
        self.check_open(tenant, label)
        return self.quotas.check(tenant, quotas, est_tokens, self.queue.active[tenant], label)

    async def acquire(self, tenant: str, est_tokens: int, label: str = metrics.OTHER) -> None:
        """Wait for an engine slot in fair order; pair with `release(tenant, est_tokens, tokens)`. The wait is
        observed in `loraplex_admission_wait_seconds`."""
        self.check_open(tenant, label)
        asked = time.monotonic()
        await self.queue.acquire(tenant, est_tokens, label)
        metrics.ADMISSION_WAIT.labels(metrics.LABELS.tenant(tenant), label).observe(time.monotonic() - asked)

    def release(self, tenant: str, est_tokens: int, tokens: int, held_s: float = 0.0) -> None:
        """The request finished having been served `tokens` tokens after holding its slot `held_s` seconds:
        correct the charge, hand the slot on (a heavy tenant paced by the guard waits before its next)."""
        self.queue.release(tenant, est_tokens, tokens, held_s)

    def observe(self, kind: str, per_token_s: float) -> None:
        """A finished request's seconds per output token since admission (`kind`: "stream" or "whole"), for
        the guard; it moves its ceiling only while an overloading tenant waits beside others."""
        if self.guard.tolerance:
            self.guard.observe(kind, per_token_s, contended=self.queue.contended())

    def close(self) -> None:
        """Stop admitting (graceful shutdown): new requests get 503 + Retry-After; admitted ones go on."""
        self.closed = True
        metrics.DRAINING.set(1)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is running or waiting; False if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        while not self.idle:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True
