"""Property-based fuzzing of the tenant API from its own /openapi.json (schemathesis), through the real
gateway, SeaweedFS and vLLM engine: no input is a 5xx, every 4xx is OpenAI's JSON error object, no other
caller gets at acme's adapter, and the gateway is still ready and serving afterwards.

Bounded and deterministic for CI: a fixed example budget per operation, derandomized generation, no
deadline. Every operation gets schema-valid and schema-violating inputs from callers with the tenant's key,
another tenant's key, a wrong key or none; half the cases are steered to names that exist (the published
adapter, `base`) so that the registry's lookups succeed too. The inference routes then get a second pass of
schema-valid bodies for existing models with acme's key, which the engine answers (small generation sizes).
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup

from tests.e2e.helpers import running_gateway

EXAMPLES = 25  # per operation
INFERENCE_EXAMPLES = 40  # the inference routes: the widest bodies
ENGINE_EXAMPLES = 30  # the inference routes' second pass, valid bodies for existing models
SETTINGS = dict(deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck))  # slow, loaded hosts fail the timing checks
ADAPTER = "shout"  # published by acme (a demo adapter)
SMALL = {"max_tokens": 4, "max_completion_tokens": 4, "min_tokens": 0, "n": 1, "best_of": 1}


@pytest.fixture(scope="module")
def fuzz_stack(engine, seaweed, demo, tmp_path_factory):
    """A gateway of its own over the session engine (fuzzed writes never touch the other tests' tenants):
    tenant acme with the adapter published, tenant other with nothing."""
    for st_ in running_gateway(engine, seaweed, demo, tmp_path_factory, "fuzz"):
        st_.tenants = {name: st_.add_tenant(name) for name in ("acme", "other")}
        st_.publish(st_.tenants["acme"], ADAPTER, demo.adapter_dirs[ADAPTER])
        yield st_


def _steer(case, data) -> None:
    """Point the case at things that exist for acme, so lookups succeed and valid bodies reach the engine."""
    for param in ("name", "ref"):
        if param in (case.path_parameters or {}):
            case.path_parameters[param] = ADAPTER
    if isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = data.draw(st.sampled_from(["base", ADAPTER]), label="model")
        # keep the engine's work small: generation sizes the gateway accepted anyway
        case.body.update({k: v for k, v in SMALL.items() if isinstance(case.body.get(k), int)})


def _names_adapter(case) -> bool:
    body = case.body if isinstance(case.body, dict) else {}
    return ADAPTER in (case.path_parameters or {}).values() or body.get("model") == ADAPTER


def _error_shape(response) -> str | None:
    """Why `response` (a 4xx) is not OpenAI's error object, or None."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"not a JSON error object: {response.text[:200]!r}"
    if not isinstance(error, dict) or not isinstance(error.get("message"), str) or not error.get("type"):
        return f"malformed error object: {response.text[:200]!r}"
    return None


def _problem(case, response, key: str | None, stack) -> str | None:
    try:
        case.validate_response(response, checks=[not_a_server_error])
    except (AssertionError, FailureGroup):  # one failure, or a group of them
        return f"{response.status_code}, a server error: {response.text[:300]!r}"
    if response.status_code >= 400:
        return _error_shape(response)
    if response.status_code < 300 and key != stack.tenants["acme"] and _names_adapter(case):
        return f"{response.status_code} for a caller other than acme on acme's adapter"
    return None


def _fuzz(operation, stack, findings: list, statuses: Counter, *, engine: bool = False) -> None:
    """Send `operation` its example budget of cases; `engine`: the second pass (valid, steered, acme's key)."""
    acme = stack.tenants["acme"]
    if engine:
        strategy, keys, examples = operation.as_strategy(GenerationMode.POSITIVE), [acme], ENGINE_EXAMPLES
    else:
        strategy = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)
        keys = [acme] * 4 + [stack.tenants["other"], "sk-wrong", None]
        examples = INFERENCE_EXAMPLES if operation.path.endswith("completions") else EXAMPLES
    session = requests.Session()

    @given(case=strategy, key=st.sampled_from(keys), data=st.data())
    @settings(max_examples=examples, **SETTINGS)
    def run(case, key, data):
        if engine or data.draw(st.booleans(), label="steer"):
            _steer(case, data)  # with any key: another tenant must not get at acme's adapter either
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = case.call(base_url=stack.url, session=session, headers=headers, timeout=120)
        statuses[operation.label, response.status_code] += 1
        problem = _problem(case, response, key, stack)
        if problem:
            body = json.dumps(case.body)[:300] if isinstance(case.body, dict | list) else repr(case.body)[:300]
            findings.append(f"{operation.label} path={case.path_parameters} query={case.query} body={body}: "
                            f"{problem}")

    run()


def test_fuzzed_tenant_api_has_no_server_errors(fuzz_stack):
    schema = schemathesis.openapi.from_url(f"{fuzz_stack.url}/openapi.json").exclude(path_regex="^/admin")
    operations = [result.ok() for result in schema.get_all_operations()]
    inference = [op for op in operations if op.path in ("/v1/completions", "/v1/chat/completions")]
    assert len(inference) == 2 and "/v1/adapters" in {op.path for op in operations}
    findings: list[str] = []
    statuses: Counter = Counter()
    for operation in operations:
        _fuzz(operation, fuzz_stack, findings, statuses)
    for operation in inference:
        _fuzz(operation, fuzz_stack, findings, statuses, engine=True)
    by_status: Counter = Counter()
    for (_, status), n in statuses.items():
        by_status[status] += n
    answered = sum(n for (label, status), n in statuses.items() if label.endswith("completions") and status < 300)
    print(f"fuzzed {sum(statuses.values())} requests over {len(operations)} operations "
          f"({answered} inference requests answered by the engine); statuses {dict(sorted(by_status.items()))}")
    assert not findings, "\n".join(findings[:30])
    assert answered > 0  # the valid bodies did reach the engine
    with fuzz_stack.client(fuzz_stack.tenants["acme"]) as c:
        assert c.get("/ready").status_code == 200
        r = c.post("/v1/completions", json={"model": ADAPTER, "prompt": "hi", "max_tokens": 2})
        assert r.status_code == 200, r.text
