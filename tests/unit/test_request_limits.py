"""Request limits without a server or a store: upload size counted while the bytes arrive
(serving/upload_form.py), the per-tenant storage limits (registry/limits.py), the header-block bound
(serving/server_config.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from common.errors import InvalidRequest, RequestTooLarge, TenantLimitExceeded, TenantStorageFull
from registry.limits import check_limits, tree_usage
from registry.settings import RegistrySettings
from serving.upload_form import FORM_OVERHEAD, read_form

pytestmark = pytest.mark.unit

BOUNDARY = "lpxboundary"
CT = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def multipart(files: dict[str, bytes], fields: dict[str, str] | None = None) -> bytes:
    out = b""
    for name, value in (fields or {}).items():
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    for filename, data in files.items():
        out += (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


class Body:
    """An ASGI request whose body arrives in `chunks`; `received` counts the chunks the app asked for."""

    def __init__(self, chunks: list[bytes], headers: dict):
        from starlette.requests import Request

        self.messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                         for i, c in enumerate(chunks)]
        self.received = 0
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        self.request = Request({"type": "http", "method": "POST", "headers": raw}, self.receive)

    async def receive(self):
        self.received += 1
        return self.messages.pop(0) if self.messages else {"type": "http.disconnect"}


def chunked(body: bytes, size: int = 64 * 1024) -> list[bytes]:
    return [body[i:i + size] for i in range(0, len(body), size)]


def form_of(body: Body, limit: int):
    return asyncio.run(read_form(body.request, limit, "LORAPLEX_MAX_UPLOAD_BYTES", "shrink it", expected="two files",
                                 max_files=8, max_fields=8))


def test_a_form_within_the_limit_is_parsed():
    form = form_of(Body(chunked(multipart({"a.json": b"{}", "w.bin": b"x" * 1000}, {"metadata": "{}"})), CT), 2000)
    assert {k: getattr(v, "size", v) for k, v in form.multi_items()} == {"metadata": "{}", "files": 1000}
    asyncio.run(form.close())


def test_a_chunked_upload_is_stopped_while_it_arrives_not_after():
    raw = multipart({"w.bin": b"x" * (8 * 1024 * 1024)})
    body = Body(chunked(raw), CT)  # no Content-Length: nothing to trust before reading
    with pytest.raises(RequestTooLarge) as e:
        form_of(body, 1024)
    assert "LORAPLEX_MAX_UPLOAD_BYTES" in e.value.message and "1049600 bytes" in e.value.message
    # stopped just past limit + framing allowance: the remaining ~7 MiB were never asked for
    assert body.received * 64 * 1024 <= 1024 + FORM_OVERHEAD + 64 * 1024
    assert body.messages


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    body = Body([b"whatever"], {**CT, "Content-Length": str(10 * FORM_OVERHEAD)})
    with pytest.raises(RequestTooLarge) as e:
        form_of(body, 1024)
    assert body.received == 0 and "Content-Length" in e.value.message


def test_files_over_the_limit_within_the_framing_allowance_are_refused_too():
    with pytest.raises(RequestTooLarge) as e:
        form_of(Body(chunked(multipart({"w.bin": b"x" * 5000})), CT), 4000)
    assert "5000 bytes of files" in e.value.message


def test_another_content_type_is_an_empty_form_and_a_malformed_one_a_400():
    body = Body([b'{"a": 1}'], {"Content-Type": "application/json"})
    assert list(form_of(body, 1024).multi_items()) == [] and body.received == 0  # the route names what is missing
    with pytest.raises(InvalidRequest):  # too many parts
        form_of(Body([multipart({f"f{i}": b"x" for i in range(9)})], CT), 1024)


def test_a_413_closes_the_connection_so_the_unread_rest_is_not_drained():
    assert RequestTooLarge("x").headers() == {"Connection": "close"}
    assert TenantStorageFull("x").headers() == {} and TenantStorageFull.status == 413
    assert TenantLimitExceeded.status == 409


# --- per-tenant storage limits ------------------------------------------------------------------------

def version(name: str, v: str, size: int, manifest: bool = True, root: str = "adapters") -> dict[str, int]:
    prefix = f"{root}/acme/{name}/versions/{v}/"
    keys = {prefix + "adapter_model.safetensors": size - 100, prefix + "adapter_config.json": 100}
    return {**keys, prefix + "manifest.json": 700} if manifest else keys


class Listing:
    """A store that answers only `list_sizes`, from a dict of key -> size."""

    def __init__(self, sizes: dict[str, int]):
        self.sizes = sizes

    def list_sizes(self, prefix: str) -> dict[str, int]:
        return {k: s for k, s in self.sizes.items() if k.startswith(prefix)}


def test_usage_counts_visible_versions_and_their_files_only():
    sizes = {**version("a", "v1", 1000), **version("a", "v2", 2000), **version("b", "v1", 500),
             **version("c", "v9", 10**9, manifest=False),  # a crashed upload's leftover: invisible, not counted
             "adapters/acme/a/aliases/prod.json": 80}
    usage = tree_usage(sizes)
    assert usage.versions == {"a": 2, "b": 1} and usage.bytes == 3500


def limits(**kw) -> RegistrySettings:
    return RegistrySettings(**{"max_adapters_per_tenant": 0, "max_versions_per_adapter": 0,
                               "max_tenant_stored_bytes": 0, **kw})


STORE = Listing({**version("a", "v1", 1000), **version("a", "v2", 2000), **version("b", "v1", 500),
                 **version("m", "v1", 4000, root="models")})


def test_versions_per_adapter():
    with pytest.raises(TenantLimitExceeded) as e:
        check_limits(STORE, limits(max_versions_per_adapter=2), "acme", "adapters", "a", 10)
    assert "LORAPLEX_MAX_VERSIONS_PER_ADAPTER=2" in e.value.message and "DELETE /v1/adapters/" in e.value.message
    check_limits(STORE, limits(max_versions_per_adapter=2), "acme", "adapters", "b", 10)


def test_adapters_per_tenant_counts_names_and_models_separately():
    with pytest.raises(TenantLimitExceeded) as e:
        check_limits(STORE, limits(max_adapters_per_tenant=2), "acme", "adapters", "new", 10)
    assert "LORAPLEX_MAX_ADAPTERS_PER_TENANT=2" in e.value.message
    check_limits(STORE, limits(max_adapters_per_tenant=2), "acme", "adapters", "a", 10)  # a new version: no new name
    check_limits(STORE, limits(max_adapters_per_tenant=2), "acme", "models", "m2", 10)  # one model so far


def test_stored_bytes_span_adapters_and_models():
    check_limits(STORE, limits(max_tenant_stored_bytes=7600), "acme", "adapters", "a", 100)  # 7500 + 100
    with pytest.raises(TenantStorageFull) as e:
        check_limits(STORE, limits(max_tenant_stored_bytes=7600), "acme", "models", "m", 101)
    assert "LORAPLEX_MAX_TENANT_STORED_BYTES=7600" in e.value.message and "from 7500 to 7601" in e.value.message
    assert "/v1/artifacts/models" in e.value.message


def test_zero_means_unlimited_and_costs_no_listing():
    class NoStore:
        def list_sizes(self, prefix):
            raise AssertionError("listed although no limit is set")

    check_limits(NoStore(), limits(), "acme", "adapters", "a", 10**12)


# --- header block ---------------------------------------------------------------------------------------

def call(app, headers: list[tuple[bytes, bytes]]) -> list[dict]:
    sent = []

    async def send(message):
        sent.append(message)

    asyncio.run(app({"type": "http", "raw_path": b"/health", "query_string": b"", "headers": headers}, None, send))
    return sent


def test_a_header_block_over_the_bound_is_431_before_the_app():
    from serving.server_config import MAX_HEADER_BYTES, HeaderLimit

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})

    assert call(HeaderLimit(app), [(b"x-big", b"a" * (MAX_HEADER_BYTES - 100))])[0]["status"] == 200
    start, body = call(HeaderLimit(app), [(b"x-big", b"a" * MAX_HEADER_BYTES)])
    assert start["status"] == 431 and (b"connection", b"close") in start["headers"]
    assert json.loads(body["body"])["error"]["code"] == "request_header_fields_too_large"
