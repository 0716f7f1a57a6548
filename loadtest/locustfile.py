"""Locust load test of the gateway: every simulated user is a tenant with its own key.

    locust -f loadtest/locustfile.py --headless -u 3 -r 3 -t 30s --csv var/loadtest/locust
    make loadtest            # the same against the running stack (var/stack.json), LOADTEST_TIME=30s

Users are assigned to tenants in popularity order (user i -> tenant i mod T); run with `-u` equal to
the number of tenants (or a multiple). Tenant k's share of the offered rate is Zipf: 1/k^s
(LORAPLEX_LOADTEST_ZIPF, 0 = uniform). Arrivals are **open-loop Poisson**: a user's wait between
arrivals is exponential and each request runs in its own greenlet, so a slow answer does not delay
the next arrival (a closed loop, constant_pacing included, hides queueing). Every request streams;
locust records two request types per tenant: `completion` (whole request, response length = tokens)
and `ttft` (time to the first streamed token). All settings: loadtest/workload.py.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import threading
import time

import gevent
import requests
from gevent.pool import Group
from locust import User, events, task
from requests.adapters import HTTPAdapter

from loadtest.workload import TenantSpec, WorkloadError, from_env

try:
    WORKLOAD, STACK_URL = from_env()
except WorkloadError as e:  # locust shows this line and exits non-zero
    raise SystemExit(f"loadtest: {e}") from None

_users = itertools.count()
_inflight = Group()
_samples_lock = threading.Lock()
_samples = open(WORKLOAD.samples, "a") if WORKLOAD.samples else None
_session = requests.Session()  # requests run in greenlets (locust patched sockets)
_session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=WORKLOAD.max_outstanding))
# A new connection per request: reusing one the server is just closing after its keep-alive timeout
# fails with "Remote end closed connection", which would be charged to the server (loopback connects are cheap).
_HEADERS = {"Connection": "close"}


def _record(environment, tenant: str, sent_wall: float, status: int, ttft: float | None, latency: float,
            tokens: int, error: str | None) -> None:
    exc = Exception(error) if error else None
    environment.events.request.fire(request_type="completion", name=tenant, response_time=latency * 1000,
                                    response_length=tokens, exception=exc, context={})
    if ttft is not None:
        environment.events.request.fire(request_type="ttft", name=tenant, response_time=ttft * 1000,
                                        response_length=0, exception=None, context={})
    if _samples is not None:
        line = json.dumps({"tenant": tenant, "sent": sent_wall, "status": status, "ttft": ttft, "latency": latency,
                           "tokens": tokens, "error": error})
        with _samples_lock:
            _samples.write(line + "\n")
            _samples.flush()


class TenantUser(User):
    """One tenant: Poisson arrivals at its Zipf share of the offered rate."""

    host = STACK_URL

    def on_start(self) -> None:
        n_tenants = len(WORKLOAD.tenants)
        index = next(_users)
        self.tenant: TenantSpec = WORKLOAD.tenants[index % n_tenants]
        users = getattr(self.environment.parsed_options, "num_users", None) or n_tenants
        mine = len(range(index % n_tenants, max(users, index + 1), n_tenants))  # users sharing this tenant
        if index == 0 and users < n_tenants:
            logging.warning("loadtest: %d users for %d tenants: the last %d tenants send nothing (use -u %d)",
                            users, n_tenants, n_tenants - users, n_tenants)
        self.rate = WORKLOAD.tenant_rates()[index % n_tenants] / max(1, mine)
        self.rng = random.Random(WORKLOAD.seed * 1000 + index)
        self.url = (self.host or "").rstrip("/") + "/v1/completions"
        if not self.host:
            raise SystemExit("loadtest: no gateway URL: pass --host or start the stack (var/stack.json)")
        # Arrival times are drawn up front as a Poisson schedule and kept even when this process is
        # briefly starved of CPU (a late wake-up shortens the next wait), so every run of the same
        # seed offers the same arrivals; the first one is random too, not a burst at t=0.
        self.next_at = time.monotonic() + self.rng.expovariate(self.rate)
        gevent.sleep(max(0.0, self.next_at - time.monotonic()))

    def wait_time(self) -> float:
        return max(0.0, self.next_at - time.monotonic())

    @task
    def arrive(self) -> None:
        self.next_at += self.rng.expovariate(self.rate)
        if len(_inflight) >= WORKLOAD.max_outstanding:
            _record(self.environment, self.tenant.name, time.time(), 0, None, 0.0, 0,
                    f"dropped: {WORKLOAD.max_outstanding} requests already open "
                    "(raise LORAPLEX_LOADTEST_MAX_OUTSTANDING)")
            return
        _inflight.spawn(self._request, self.tenant, WORKLOAD.body(self.tenant, self.rng))

    def _request(self, tenant: TenantSpec, body: dict) -> None:
        sent_wall, start = time.time(), time.perf_counter()
        ttft, tokens, events_seen, status, error = None, 0, 0, 0, None
        try:
            with _session.post(self.url, json=body, stream=True, timeout=(10, 600),
                               headers={**_HEADERS, "Authorization": f"Bearer {tenant.api_key}"}) as r:
                status = r.status_code
                if status != 200:
                    error = f"HTTP {status}: {r.text[:200]}"
                else:
                    for line in r.iter_lines():
                        if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                            continue
                        chunk = json.loads(line[5:])
                        if "error" in chunk:
                            error = f"stream error: {chunk['error'].get('message', chunk['error'])}"[:300]
                            break
                        if chunk.get("choices"):
                            events_seen += 1
                            if ttft is None:
                                ttft = time.perf_counter() - start
                        if chunk.get("usage"):
                            tokens = chunk["usage"].get("completion_tokens") or 0
                    tokens = tokens or events_seen
        except gevent.GreenletExit:
            error = "unfinished: still open when the run's drain time ended"
            raise
        except (requests.RequestException, ValueError) as e:
            error = f"{type(e).__name__}: {e}"[:300]
        finally:
            if status == 200 and error is None and tokens == 0:
                error = "the stream carried no tokens"
            recorded = status if error is None else (599 if status in (0, 200) else status)
            elapsed = time.perf_counter() - start
            _record(self.environment, tenant.name, sent_wall, recorded, ttft, elapsed, tokens, error)


@events.test_stop.add_listener
def _drain(environment, **_kw) -> None:
    """Arrivals stop at the time limit; requests already sent get up to DRAIN_S to finish."""
    _inflight.join(timeout=WORKLOAD.drain_s)
    _inflight.kill(block=True, timeout=10)


@events.quitting.add_listener
def _close(environment, **_kw) -> None:
    if _samples is not None:
        _samples.close()
