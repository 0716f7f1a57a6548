"""The one forwarding path over a fake transport: admission, the ticket, whole and streamed relay, finishing.

The two real transports: serving/transport/http.py (below, over httpx's mock transport; end to end in
tests/e2e/test_serving.py) and serving/transport/ray.py (tests/unit/test_ray_logic.py, tests/e2e/test_ray.py).
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import httpx
import pytest

from common.errors import EngineUnavailable, error_body
from serving.admission import Admission
from serving.forwarding import forward
from serving.settings import ServingSettings
from serving.transport.base import EngineCall, Reply, Transport
from serving.transport.http import HttpTransport

TENANT = SimpleNamespace(name="acme", quotas={})
MANIFEST = SimpleNamespace(name="rev", version="0123456789abcdef")
LORA = "lpx:acme:rev:0123456789abcdef"


class FakeReply(Reply):
    def __init__(self, status=200, body=None, lines=(), headers=None, text=""):
        self.status, self.body, self._lines, self.headers, self._text = status, body, list(lines), headers, text
        self.closed = 0

    async def json(self):
        if isinstance(self.body, BaseException):
            raise self.body
        return self.body

    def text(self):
        return self._text

    async def lines(self):
        for line in self._lines:
            if isinstance(line, BaseException):
                raise line
            yield line

    async def close(self):
        self.closed += 1


class FakeTransport(Transport):
    """Answers from a script; holds one 'adapter' per call so that releases can be counted."""

    def __init__(self, *replies, own=()):
        self.replies, self.own, self.calls, self.released = list(replies), set(own), [], 0

    def serves_as_is(self, tenant, model):
        return (tenant, model) in self.own

    async def send(self, call: EngineCall):
        self.calls.append(call)
        call.releases.append(self._release)
        item = self.replies.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def _release(self):
        self.released += 1

    async def probe(self):
        return None


def _gateway(transport):
    async def resolve(tenant, ref):
        assert ref == "rev", "only adapters are resolved"
        return MANIFEST

    return SimpleNamespace(settings=ServingSettings(), admission=Admission(4, 16), resolve=resolve,
                           transport=transport, engine_failed=lambda: None)


def test_a_whole_answer_shows_the_public_name_and_gives_everything_back():
    reply = FakeReply(body={"model": LORA, "choices": [{"text": "x"}], "usage": {"total_tokens": 5}},
                      headers={"x-a": "1"})
    t = FakeTransport(reply)
    gw = _gateway(t)
    r = asyncio.run(forward(gw, TENANT, {"model": "rev", "prompt": "p"}, "/v1/completions"))
    assert r.status_code == 200 and json.loads(r.body)["model"] == "rev" and r.headers["x-a"] == "1"
    (call,) = t.calls
    assert (call.lora, call.manifest, call.stream, call.path) == (LORA, MANIFEST, False, "/v1/completions")
    assert t.released == 1 and reply.closed and gw.admission.inflight == 0


def test_a_tenants_own_model_is_sent_unresolved():
    t = FakeTransport(FakeReply(body={"model": "solo", "choices": []}), own={("acme", "solo")})
    asyncio.run(forward(_gateway(t), TENANT, {"model": "solo", "prompt": "p"}, "/v1/completions"))
    assert t.calls[0].lora is None and t.calls[0].manifest is None


@pytest.mark.parametrize("status, expect", [(200, 502), (500, 500)])
def test_an_answer_that_is_not_json_is_an_engine_error(status, expect):
    t = FakeTransport(FakeReply(status=status, body=None, text="oops"))
    gw = _gateway(t)
    r = asyncio.run(forward(gw, TENANT, {"model": "base", "prompt": "p"}, "/v1/completions"))
    assert r.status_code == expect
    assert json.loads(r.body) == error_body(f"the engine answered HTTP {status}: oops", code="engine_error")
    assert t.released == 1 and gw.admission.inflight == 0


@pytest.mark.parametrize("failure", [EngineUnavailable("down"), asyncio.CancelledError()])
def test_a_failed_send_frees_the_slot_and_the_hold(failure):
    t = FakeTransport(failure)
    gw = _gateway(t)
    with pytest.raises(type(failure)):
        asyncio.run(forward(gw, TENANT, {"model": "rev", "prompt": "p"}, "/v1/completions"))
    assert t.released == 1 and gw.admission.inflight == 0


def _stream(gw, body=None):
    """The response and the lines the client got (the relay sends bytes, several lines at a time)."""
    async def go():
        r = await forward(gw, TENANT, body or {"model": "rev", "prompt": "p", "stream": True}, "/v1/completions")
        parts = [p if isinstance(p, bytes) else p.encode() async for p in r.body_iterator]
        await r.background()  # what Starlette runs after the response
        return r, b"".join(parts).decode().split("\n")
    return asyncio.run(go())


def test_a_stream_is_relayed_renamed_and_its_usage_charged_but_not_shown():
    chunk = {"model": LORA, "choices": [{"text": "x"}]}
    usage = {"model": LORA, "choices": [], "usage": {"total_tokens": 9}}
    reply = FakeReply(lines=[f"data: {json.dumps(chunk)}", "", f"data: {json.dumps(usage)}", "", "data: [DONE]", ""])
    t = FakeTransport(reply)
    gw = _gateway(t)
    _, lines = _stream(gw)
    assert json.loads(lines[0][5:])["model"] == "rev" and lines[-3:] == ["data: [DONE]", "", ""]
    assert not any("usage" in line or LORA in line for line in lines)
    assert t.calls[0].body["stream_options"] == {"include_usage": True}
    assert t.released == 1 and reply.closed and gw.admission.inflight == 0


@pytest.mark.parametrize("setting, asked, sent", [(1, None, None), (4, None, 4), (4, 2, 4), (4, 8, 8), (1, 3, 3)])
def test_a_stream_asks_the_engine_for_the_operators_tokens_per_chunk_or_the_clients_if_more(setting, asked, sent):
    reply = FakeReply(lines=["data: [DONE]", ""])
    t = FakeTransport(reply)
    gw = _gateway(t)
    gw.settings = ServingSettings(stream_interval=setting)
    body = {"model": "rev", "prompt": "p", "stream": True}
    if asked is not None:
        body["stream_interval"] = asked
    _stream(gw, body)
    assert t.calls[0].body.get("stream_interval") == sent


def test_a_whole_answer_is_not_given_a_stream_interval():
    t = FakeTransport(FakeReply(body={"model": LORA, "choices": [{"text": "x"}]}))
    gw = _gateway(t)
    gw.settings = ServingSettings(stream_interval=4)
    asyncio.run(forward(gw, TENANT, {"model": "rev", "prompt": "p"}, "/v1/completions"))
    assert "stream_interval" not in t.calls[0].body


def test_a_stream_that_breaks_ends_with_an_error_event():
    reply = FakeReply(lines=["data: {}", EngineUnavailable("the engine stream broke (ReadError)")])
    gw = _gateway(FakeTransport(reply))
    _, lines = _stream(gw)
    err = json.loads(lines[-5][5:])["error"]
    assert err["code"] == "engine_unavailable" and err["message"].endswith("; retry the request")
    assert lines[-3:] == ["data: [DONE]", "", ""] and gw.admission.inflight == 0


def test_a_client_that_leaves_before_the_stream_starts_closes_the_engine_side():
    reply = FakeReply(lines=["data: {}"])
    t = FakeTransport(reply)
    gw = _gateway(t)

    async def go():
        r = await forward(gw, TENANT, {"model": "rev", "prompt": "p", "stream": True}, "/v1/completions")
        await r.background()  # the body was never iterated
    asyncio.run(go())
    assert reply.closed and t.released == 1 and gw.admission.inflight == 0


class FakeResidency:
    def __init__(self):
        self.held: list[str] = []

    def try_hold(self, name):
        return False  # never resident: each request goes through acquire

    async def acquire(self, name, local_path):
        self.held.append(name)

    def release(self, name):
        self.held.remove(name)


async def _engine(seen: list, stream_lines: tuple[bytes, ...] = ()):
    """A stand-in engine on a free loopback port (aiohttp, as the transport's client): records (path, model)
    and answers JSON, or the SSE lines of `stream_lines` for a streamed request. Returns (url, runner)."""
    from aiohttp import web

    async def completions(request):
        body = await request.json()
        seen.append((request.host, body["model"]))
        if not body.get("stream"):
            return web.json_response({"model": body["model"], "choices": []})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for line in stream_lines:
            await resp.write(line)
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", runner


def test_the_http_transport_holds_the_adapter_and_names_it_to_the_engine():
    seen = []
    residency = FakeResidency()

    async def go():
        shared, r1 = await _engine(seen)
        own, r2 = await _engine(seen)
        settings = ServingSettings(engine_url=shared, dedicated_engines={"acme": {"model": "solo", "url": own}})
        transport = HttpTransport(settings, SimpleNamespace(http=httpx.AsyncClient()), residency, None)
        call = EngineCall("acme", "/v1/completions", {"model": "rev"}, False, MANIFEST, LORA)
        reply = await transport.send(call)
        assert residency.held == [LORA] and reply.status == 200 and (await reply.json())["model"] == LORA
        await reply.close()
        for release in call.releases:
            release()
        assert transport.serves_as_is("acme", "solo") and not transport.serves_as_is("acme", "rev")
        for model in ("solo", "base"):
            await (await transport.send(EngineCall("acme", "/v1/completions", {"model": model}, False))).close()
        await transport.aclose()
        await r1.cleanup()
        await r2.cleanup()
        return shared, own
    shared, own = asyncio.run(go())
    assert residency.held == []
    host = lambda url: url.split("//")[1]  # noqa: E731
    assert seen == [(host(shared), LORA), (host(own), "solo"), (host(shared), ServingSettings().base_name)]


def test_the_http_transport_relays_the_engines_bytes_and_closes_a_stream_left_early():
    seen = []
    events = (b'data: {"model":"x","choices":[{"text":"a"}]}\n\n', b"data: [DONE]\n\n")

    async def go():
        url, runner = await _engine(seen, events)
        transport = HttpTransport(ServingSettings(engine_url=url), SimpleNamespace(http=httpx.AsyncClient()),
                                  None, None)
        reply = await transport.send(EngineCall("acme", "/v1/completions", {"model": "base", "stream": True}, True))
        got = b"".join([c async for c in reply.chunks()])
        await reply.close()
        left = await transport.send(EngineCall("acme", "/v1/completions", {"model": "base", "stream": True}, True))
        await left.close()  # not read: the connection is closed, not pooled (the engine aborts the request)
        assert left.upstream.connection is None and left.upstream.closed
        await transport.aclose()
        await runner.cleanup()
        return got
    assert asyncio.run(go()) == b"".join(events)


def test_the_http_transport_turns_a_refused_connection_into_a_retryable_503():
    from common.procs import free_port

    transport = HttpTransport(ServingSettings(engine_url=f"http://127.0.0.1:{free_port()}"),
                              SimpleNamespace(http=httpx.AsyncClient()), None, None)

    async def go():
        try:
            await transport.send(EngineCall("acme", "/v1/completions", {"model": "base"}, False))
        finally:
            await transport.aclose()
    with pytest.raises(EngineUnavailable) as e:
        asyncio.run(go())
    assert e.value.retry_after == 5 and "ConnectorError" in e.value.message
