"""Unit tests for request validation and upstream-failure mapping in routing.services."""

import pytest

from routing.adapters import UpstreamFailure
from routing.errors import InvalidRequest, UpstreamError, UpstreamRateLimited, UpstreamTimeout
from routing.services import failure_to_error, validate_body

OK = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_a_minimal_body_is_valid():
    validate_body(OK)
    validate_body({**OK, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    validate_body({**OK, "messages": [{"role": "assistant", "content": None, "tool_calls": []}]})


@pytest.mark.parametrize(
    "body, param",
    [
        ([], None),
        ({**OK, "model": ""}, "model"),
        ({**OK, "model": 3}, "model"),
        ({**OK, "messages": []}, "messages"),
        ({**OK, "messages": ["hi"]}, "messages[0]"),
        ({**OK, "messages": [{"content": "hi"}]}, "messages[0].role"),
        ({**OK, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({**OK, "stream": 1}, "stream"),
        ({**OK, "stream_options": "yes"}, "stream_options"),
        ({**OK, "user": 7}, "user"),
        ({**OK, "base_url": "x"}, "base_url"),
        ({**OK, "tools": [{"function": {"api_key": "x"}}]}, "tools[0].function.api_key"),
    ],
)
def test_bad_bodies_name_the_offending_parameter(body, param):
    with pytest.raises(InvalidRequest) as exc:
        validate_body(body)
    assert exc.value.param == param
    assert exc.value.status_code == 400


def test_absurd_nesting_is_refused_not_crashed():
    deep = {}
    node = deep
    for _ in range(200):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(InvalidRequest, match="nested"):
        validate_body({**OK, "metadata": deep})


@pytest.mark.parametrize(
    "failure, error_class, status",
    [
        (UpstreamFailure("timeout", "t"), UpstreamTimeout, 504),
        (UpstreamFailure("connection", "refused"), UpstreamError, 502),
        (UpstreamFailure("bad_response", "garbage"), UpstreamError, 502),
        (UpstreamFailure("status", "boom", status=500), UpstreamError, 502),
        (UpstreamFailure("status", "bad key", status=401), UpstreamError, 502),
        (UpstreamFailure("status", "no such model", status=404), UpstreamError, 502),
        (UpstreamFailure("status", "slow down", status=429), UpstreamRateLimited, 429),
        (UpstreamFailure("status", "too long", status=400), InvalidRequest, 400),
        (UpstreamFailure("status", "req timeout", status=408), UpstreamTimeout, 504),
    ],
)
def test_upstream_failures_map_to_client_errors(failure, error_class, status):
    error = failure_to_error(failure)
    assert type(error) is error_class and error.status_code == status


def test_upstream_credentials_errors_are_not_echoed():
    error = failure_to_error(UpstreamFailure("status", "Incorrect API key provided: sk-abc***xyz", status=401))
    assert "sk-" not in error.message


def test_retry_after_is_passed_on_rounded_up():
    error = failure_to_error(UpstreamFailure("status", "slow", status=429, retry_after=2.2))
    assert error.headers == {"Retry-After": "3"}


def test_a_role_that_is_not_a_string_is_a_bad_request_not_a_crash():
    for role in (["user"], {"a": 1}, 5, None):
        with pytest.raises(InvalidRequest) as exc:
            validate_body({**OK, "messages": [{"role": role, "content": "hi"}]})
        assert exc.value.param == "messages[0].role"


def test_a_bug_in_an_upstream_call_still_brings_the_instance_in_flight_count_down():
    """Our own bug (not an upstream failure) propagates, blames no instance, and leaks no in-flight request."""
    import asyncio
    import time
    import uuid
    from decimal import Decimal

    from routing import state
    from routing.services import ChatRequest
    from routing.snapshot import InstanceConfig, KeyConfig, ModelConfig, Snapshot

    instance = InstanceConfig(
        id=f"inst-bug-{uuid.uuid4().hex[:6]}", model="m", provider_kind="openai", litellm_model="openai/m",
        api_base="http://127.0.0.1:9/v1", api_key=None, openai_compatible=True, weight=1.0, rpm=None, tpm=None,
        timeout=5.0, stream_timeout=5.0, input_cost_per_token=Decimal(0), output_cost_per_token=Decimal(0),
    )  # fmt: skip
    model = ModelConfig(name="m", description="", strategy="round-robin", capabilities=(), context_window=None,
                        created=0, instances=(instance,))  # fmt: skip
    snap = Snapshot(token=None, models={"m": model}, keys_by_hash={}, default_strategy="round-robin",
                    auto_select=False, loaded_at=time.time())  # fmt: skip
    key = KeyConfig(pk=1, name="k", prefix="cv-", is_admin=False, allowed_models=None, expires_at=None, revoked=False)
    chat = ChatRequest(request_id=uuid.uuid4(), key=key, snapshot=snap)
    chat.resolve_model(OK)

    async def buggy(_instance):
        raise TypeError("a bug of ours")

    with pytest.raises(TypeError):
        asyncio.run(chat._failover(buggy))
    routing_state = state.get()
    assert routing_state.total_in_flight(instance.id) == 0
    assert routing_state.breaker(instance.id).current(time.time()) == "closed"
    assert chat.attempts[-1]["outcome"] == "error"
