"""Pure logic of the Ray Serve mode: adapter ids, settings, eviction, the gateway's routing and retries.

The real thing (a local Ray cluster, two vLLM engines) is tests/e2e/test_ray.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("ray", reason="the Ray extra is missing: pip install -e '.[ray]'")

from common.errors import EngineUnavailable, ModelNotFound
from serving.admission import Admission
from serving.forwarding import forward
from serving.ray_app import forwarded_env
from serving.ray_engine import EngineDown, LoadedAdapter, parse_lora_name
from serving.ray_settings import RaySettings
from serving.settings import ServingSettings
from serving.transport.ray import RayTransport, as_loraplex
from tests.waiting import wait_until

VERSION = "0123456789abcdef"


def test_parse_lora_name_accepts_only_adapter_ids():
    assert parse_lora_name(f"lpx:acme:reverse:{VERSION}") == ("acme", "reverse", VERSION)
    for bad in ("base", "lpx:acme:reverse", f"lpx:Acme:reverse:{VERSION}", f"lpx:acme:../x:{VERSION}",
                "lpx:acme:reverse:nothex", f"xyz:acme:reverse:{VERSION}", f"lpx:acme:a:b:{VERSION}", None):
        with pytest.raises(ModelNotFound):
            parse_lora_name(bad)


def test_capacity_defaults_to_and_never_exceeds_the_engines_cpu_loras():
    assert RaySettings().capacity(8) == 8
    assert RaySettings(adapters_per_replica=3).capacity(8) == 3
    with pytest.raises(ValueError, match="LORAPLEX_MAX_CPU_LORAS"):
        RaySettings(adapters_per_replica=9).capacity(8)


def test_forwarded_env_carries_config_but_not_the_local_engine(monkeypatch):
    monkeypatch.setenv("LORAPLEX_S3_BUCKET", "b")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("LORAPLEX_ENGINE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("HOME_UNRELATED_X", "1")
    env = forwarded_env()
    assert {"LORAPLEX_S3_BUCKET", "AWS_ACCESS_KEY_ID", "VLLM_CPU_KVCACHE_SPACE"} <= set(env)
    assert "LORAPLEX_ENGINE_URL" not in env and "HOME_UNRELATED_X" not in env


class FakeReplica:
    def __init__(self, drain_timeout_s=5.0):
        self.drain_timeout_s = drain_timeout_s
        self.resident = {"a"}
        self.unloaded: list[tuple[str, float]] = []

    def unload_now(self, name):
        self.unloaded.append((name, time.monotonic()))


def test_eviction_waits_for_running_requests_then_unloads_once():
    replica = FakeReplica(drain_timeout_s=60)  # the drain must outlast the test's own pauses on any host
    adapter = LoadedAdapter("a", replica)
    adapter.hold()
    t = threading.Thread(target=adapter.__del__)  # Ray calls it from a worker thread
    t.start()
    wait_until(lambda: "a" not in replica.resident, what="the eviction began")  # no longer counted...
    time.sleep(0.3)  # ...and, while the request runs, not unloaded however long one waits
    assert replica.unloaded == []
    released = time.monotonic()
    adapter.release()
    t.join(30)
    assert [n for n, _ in replica.unloaded] == ["a"] and replica.unloaded[0][1] >= released
    adapter.__del__()  # garbage collection calls it again: nothing happens
    assert len(replica.unloaded) == 1


def test_eviction_gives_up_waiting_after_the_drain_timeout():
    replica = FakeReplica(drain_timeout_s=0.2)
    adapter = LoadedAdapter("a", replica)
    adapter.hold()
    adapter.__del__()
    assert [n for n, _ in replica.unloaded] == ["a"]


class RayTaskErrorLike(Exception):
    def __init__(self, cause):
        super().__init__(str(cause))
        self.cause = cause


def test_replica_errors_keep_their_type_and_others_become_503():
    err = as_loraplex(RayTaskErrorLike(ModelNotFound("gone", param="model")))
    assert isinstance(err, ModelNotFound) and err.status == 404 and err.param == "model"
    down = as_loraplex(RayTaskErrorLike(EngineDown("engine died")))
    assert isinstance(down, EngineUnavailable) and down.status == 503 and down.retry_after == 5
    other = as_loraplex(RuntimeError("actor died"))
    assert isinstance(other, EngineUnavailable) and "RuntimeError" in other.message


class FakeStream:
    def __init__(self, items):
        self.items, self.cancelled = list(items), False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.items:
            raise StopAsyncIteration
        item = self.items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self):
        self.cancelled = True


class FakeHandle:
    """Records the options of each call; answers from a script of results (exceptions are raised)."""

    def __init__(self, script):
        self.script, self.calls, self._opts = list(script), [], {}
        self.generate = SimpleNamespace(remote=self._generate)
        self.generate_stream = SimpleNamespace(remote=self._stream)

    def options(self, **kw):
        clone = FakeHandle.__new__(FakeHandle)
        clone.__dict__.update(self.__dict__)
        clone._opts = kw
        clone.generate = SimpleNamespace(remote=clone._generate)
        clone.generate_stream = SimpleNamespace(remote=clone._stream)
        return clone

    def _next(self, args):
        self.calls.append((self._opts, args))
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def _generate(self, *args):
        async def run():
            return self._next(args)
        return run()

    def _stream(self, *args):
        return self._next(args)


def _gateway(handle, **ray_kw):
    manifest = SimpleNamespace(name="reverse", version=VERSION)

    async def resolve(tenant, ref):
        if ref != "reverse":
            raise ModelNotFound("no")
        return manifest

    transport = RayTransport(handle, RaySettings(routing_headers=True, retry_window_s=5, **ray_kw))
    return SimpleNamespace(settings=ServingSettings(), admission=Admission(4, 16), resolve=resolve,
                           transport=transport, engine_failed=lambda: None)


TENANT = SimpleNamespace(name="acme", quotas={})
OK = {"status": 200, "replica": "r1", "resident": True, "loads": 1,
      "body": {"model": f"lpx:acme:reverse:{VERSION}", "choices": [{"text": " x"}], "usage": {"total_tokens": 3}}}


def test_affinity_routing_names_the_adapter_and_hides_the_engine_name():
    from serving import metrics

    ok = metrics.REQUESTS.labels("acme", "reverse", "ok")
    before = ok._value.get()
    handle = FakeHandle([OK])
    gw = _gateway(handle)
    r = asyncio.run(forward(gw, TENANT, {"model": "reverse", "prompt": "p"}, "/v1/completions"))
    assert ok._value.get() == before + 1  # the gateway's per-tenant, per-adapter series
    assert r.status_code == 200 and json.loads(r.body)["model"] == "reverse"
    (opts, args), = handle.calls
    assert opts["multiplexed_model_id"] == f"lpx:acme:reverse:{VERSION}"
    assert args == ("/v1/completions", {"model": "reverse", "prompt": "p"}, f"lpx:acme:reverse:{VERSION}")
    assert r.headers["x-loraplex-replica"] == "r1" and r.headers["x-loraplex-resident"] == "true"
    assert gw.admission.inflight == 0


def test_random_routing_and_base_requests_carry_no_model_id():
    handle = FakeHandle([OK, {**OK, "body": {"model": "base", "choices": []}}])
    gw = _gateway(handle, routing="random")
    asyncio.run(forward(gw, TENANT, {"model": "reverse", "prompt": "p"}, "/v1/completions"))
    asyncio.run(forward(gw, TENANT, {"model": "base", "prompt": "p"}, "/v1/completions"))
    assert [("multiplexed_model_id" in o) for o, _ in handle.calls] == [False, False]
    assert handle.calls[1][1][2] is None  # base: no adapter


def test_a_dead_engine_before_the_request_is_retried_on_any_replica():
    handle = FakeHandle([RayTaskErrorLike(EngineDown("dead")), RayTaskErrorLike(EngineDown("dead")), OK])
    gw = _gateway(handle)
    r = asyncio.run(forward(gw, TENANT, {"model": "reverse", "prompt": "p"}, "/v1/completions"))
    assert r.status_code == 200
    assert ["multiplexed_model_id" in o for o, _ in handle.calls] == [True, False, False]


def test_other_replica_failures_are_not_retried_and_free_the_slot():
    handle = FakeHandle([RayTaskErrorLike(EngineUnavailable("stream broke")), OK])
    gw = _gateway(handle)
    with pytest.raises(EngineUnavailable):
        asyncio.run(forward(gw, TENANT, {"model": "reverse", "prompt": "p"}, "/v1/completions"))
    assert len(handle.calls) == 1 and gw.admission.inflight == 0


def test_unknown_model_is_404_before_any_replica_is_called():
    handle = FakeHandle([OK])
    with pytest.raises(ModelNotFound):
        asyncio.run(forward(_gateway(handle), TENANT, {"model": "other", "prompt": "p"}, "/v1/completions"))
    assert handle.calls == []


def test_stream_is_relayed_with_the_public_model_name_and_cancelled_at_the_end():
    chunk = {"model": f"lpx:acme:reverse:{VERSION}", "choices": [{"text": "x"}]}
    usage = {"model": f"lpx:acme:reverse:{VERSION}", "choices": [], "usage": {"total_tokens": 7}}
    stream = FakeStream([{"status": 200, "replica": "r2", "resident": False, "loads": 3},
                         f"data: {json.dumps(chunk)}", "", f"data: {json.dumps(usage)}", "data: [DONE]", ""])
    handle = FakeHandle([stream])
    gw = _gateway(handle)

    async def go():
        r = await forward(gw, TENANT, {"model": "reverse", "prompt": "p", "stream": True}, "/v1/completions")
        assert r.headers["x-loraplex-replica"] == "r2"
        return r, [line async for line in r.body_iterator]

    r, chunks = asyncio.run(go())
    body = b"".join(c if isinstance(c, bytes) else c.encode() for c in chunks).decode()
    lines = [line for line in body.split("\n") if line]  # the SSE events' data lines, as a client reads them
    assert json.loads(lines[0][5:])["model"] == "reverse" and lines[-1] == "data: [DONE]"
    assert "lpx:" not in body  # the engine-side name never reaches the tenant
    assert stream.cancelled and gw.admission.inflight == 0
    # the gateway asked for the usage chunk (token metrics, the tenant's charge) and kept it to itself
    assert handle.calls[0][1][1]["stream_options"] == {"include_usage": True}
    assert not any("usage" in line for line in lines)
    assert gw.admission.counters["acme"] == 7


def test_stream_failure_midway_becomes_an_sse_error_event():
    stream = FakeStream([{"status": 200, "replica": "r2", "resident": True, "loads": 1}, "data: {}",
                         RayTaskErrorLike(EngineUnavailable("the engine stream broke"))])
    gw = _gateway(FakeHandle([stream]))

    async def go():
        r = await forward(gw, TENANT, {"model": "reverse", "prompt": "p", "stream": True}, "/v1/completions")
        return [line async for line in r.body_iterator]

    lines = asyncio.run(go())
    assert json.loads(lines[-2][5:])["error"]["code"] == "engine_unavailable" and lines[-1] == "data: [DONE]\n\n"
    assert gw.admission.inflight == 0


def test_readiness_probes_some_engine_replica():
    from serving.gateway import Gateway

    class ProbeHandle:
        def __init__(self, error=None):
            self.probe = SimpleNamespace(remote=self._probe)
            self.error = error

        async def _probe(self):
            if self.error:
                raise self.error
            return {"replica": "r1"}

    def gateway(handle):
        return SimpleNamespace(supervisor=None, _ready=(0.0, False, {}), settings=ServingSettings(ready_cache_s=0),
                               store=SimpleNamespace(ping=lambda: None, bucket="b"),
                               transport=RayTransport(handle, RaySettings()))

    assert asyncio.run(Gateway.readiness(gateway(ProbeHandle()))) == (True, {"engine": "ok", "storage": "ok"})
    ok, detail = asyncio.run(Gateway.readiness(gateway(ProbeHandle(RayTaskErrorLike(EngineDown("it died"))))))
    assert not ok and detail["engine"] == "it died"
    ok, detail = asyncio.run(Gateway.readiness(gateway(ProbeHandle(RuntimeError("no replicas")))))
    assert not ok and detail["engine"] == "no engine replica answered a probe (RuntimeError)"


def test_the_apps_inference_routes_go_through_ray():
    """The ingress serves the single-machine app unchanged; its routes forward through the Ray transport."""
    from fastapi.testclient import TestClient

    from serving.app import create_app

    handle = FakeHandle([OK])
    gw = _gateway(handle)

    async def authenticate(key):
        return TENANT

    gw.authenticate = authenticate
    app = create_app(gw)
    app.state.gateway = gw  # no lifespan: nothing to start
    r = TestClient(app).post("/v1/completions", headers={"Authorization": "Bearer k"},
                             json={"model": "reverse", "prompt": "p"})
    assert r.status_code == 200 and r.json()["model"] == "reverse" and r.headers["x-loraplex-replica"] == "r1"
    assert handle.calls[0][0]["multiplexed_model_id"] == f"lpx:acme:reverse:{VERSION}"


def test_app_builder_takes_settings_from_args_for_serve_config_files(monkeypatch):
    from serving.ray_app import app_builder

    monkeypatch.setenv("LORAPLEX_MAX_CPU_LORAS", "6")
    app = app_builder({"engine_replicas": 3, "adapters_per_replica": 5})
    engines = app._bound_deployment.init_args[0]  # Gateway.bind(engines, settings)
    assert engines._bound_deployment._deployment_config.num_replicas == 3
    assert engines._bound_deployment.init_args[0] == 5  # the replicas' multiplexing capacity
    with pytest.raises(ValueError, match="exceeds"):
        app_builder({"adapters_per_replica": 7})


def test_replica_errors_as_ray_raises_them_become_plain_loraplex_errors():
    """Ray raises a `RayTaskError(ModelNotFound)` hybrid with the original as `.cause`."""
    from ray.exceptions import RayTaskError

    hybrid = RayTaskError("f", "traceback", ModelNotFound("gone", param="model")).as_instanceof_cause()
    err = as_loraplex(hybrid)
    assert type(err) is ModelNotFound and err.message == "gone" and err.param == "model"
    local = ModelNotFound("here")
    assert as_loraplex(local) is local


def _group_alive(pgid: int) -> bool:
    """Some member of process group `pgid` is alive (zombies waiting for a slow init do not count)."""
    from common.procs import _group_alive as alive

    return alive(pgid)


def _watchdogs(pgid: int) -> list[int]:
    from pathlib import Path

    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"lpx-engine-watchdog" in args and str(pgid).encode() in args:
            found.append(int(cmdline.parent.name))
    return found


def test_watchdog_kills_the_whole_engine_group_when_the_replica_dies():
    """Ray SIGKILLs a dead replica's direct children only; the engine's own children must go too."""
    import signal
    import subprocess

    from serving.ray_engine import start_watchdog

    replica = subprocess.Popen(["sleep", "60"])
    engine = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60"], start_new_session=True)
    start_watchdog(engine.pid, owner=replica.pid)
    wait_until(lambda: _watchdogs(engine.pid), what="the watchdog started")
    time.sleep(1.5)  # the scenario: a while with the replica alive, in which nothing may happen
    assert _group_alive(engine.pid)
    replica.send_signal(signal.SIGKILL)
    replica.wait(5)
    wait_until(lambda: engine.poll() is not None and not _group_alive(engine.pid), what="the group was killed")
    wait_until(lambda: not _watchdogs(engine.pid), what="the watchdog exited")


def test_watchdog_exits_by_itself_once_the_engine_group_is_gone():
    import subprocess

    from common.procs import stop_group
    from serving.ray_engine import start_watchdog

    engine = subprocess.Popen(["sleep", "60"], start_new_session=True)
    start_watchdog(engine.pid)
    wait_until(lambda: _watchdogs(engine.pid), what="the watchdog started")
    stop_group(engine.pid, 5)
    wait_until(lambda: not _watchdogs(engine.pid), what="the watchdog exited")


def test_an_engine_failure_is_retryable_only_when_the_engine_is_gone_or_refused():
    import subprocess

    import httpx

    from serving.ray_engine import EngineReplica

    def replica(proc):
        fake = SimpleNamespace(proc=proc, replica_id="r1")
        fake._down = lambda cause=None: EngineReplica._down(fake, cause)
        return fake

    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "30"])
    try:
        read, connect, timeout = httpx.ReadError("reset"), httpx.ConnectError("refused"), httpx.ReadTimeout("slow")
        assert isinstance(asyncio.run(EngineReplica._failed(replica(dead), read)), EngineDown)
        assert isinstance(asyncio.run(EngineReplica._failed(replica(alive), connect)), EngineDown)
        for err in (read, timeout):  # a live engine may have started the request: not sent elsewhere
            got = asyncio.run(EngineReplica._failed(replica(alive), err))
            assert type(got) is EngineUnavailable, err
    finally:
        alive.kill()
        alive.wait()


def test_a_request_that_sees_the_engine_fail_makes_the_next_ready_check_again():
    """A cached 200 must not outlive a crash a request has already seen (the supervisor may not have reaped
    the killed engine yet): the next /ready probes again."""
    from serving.gateway import Gateway

    stream = FakeStream([{"status": 200, "replica": "r2", "resident": True, "loads": 1}, "data: {}",
                         RayTaskErrorLike(EngineUnavailable("the engine stream broke"))])
    gw = _gateway(FakeHandle([stream]))
    probes = []

    async def probe():
        probes.append(1)
        raise EngineUnavailable("the engine is gone")

    gw.transport.probe = probe
    gw.settings = ServingSettings(ready_cache_s=60)
    gw.supervisor, gw.store = None, SimpleNamespace(ping=lambda: None, bucket="b")
    gw._ready = (time.monotonic(), True, {"engine": "ok", "storage": "ok"})
    gw.engine_failed = lambda: Gateway.engine_failed(gw)
    assert asyncio.run(Gateway.readiness(gw))[0] and not probes  # the fresh verdict is reused

    async def go():
        r = await forward(gw, TENANT, {"model": "reverse", "prompt": "p", "stream": True}, "/v1/completions")
        return [line async for line in r.body_iterator]

    assert "engine_unavailable" in asyncio.run(go())[-2]
    ok, detail = asyncio.run(Gateway.readiness(gw))
    assert not ok and detail["engine"] == "the engine is gone" and probes == [1]
