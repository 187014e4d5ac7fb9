"""Unit tests for routing.services: upstream-failure mapping, and what a failed upstream call leaves behind."""

import pytest

from routing.adapters import UpstreamFailure
from routing.errors import InvalidRequest, UpstreamError, UpstreamRateLimited, UpstreamTimeout
from routing.services import failure_to_error

OK = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


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


def chat_request():
    """Return a ChatRequest for a snapshot with model "m" (one instance, nothing listening) and a key for any model."""
    import time
    import uuid
    from decimal import Decimal

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
    return ChatRequest(request_id=uuid.uuid4(), key=key, snapshot=snap)


def test_resolve_model_validates_the_body_then_records_the_model_chosen():
    chat = chat_request()
    with pytest.raises(InvalidRequest) as exc:
        chat.resolve_model({"model": "m"})
    assert exc.value.param == "messages" and chat.model is None
    assert chat.resolve_model({**OK, "stream": True}) is chat.snapshot.models["m"]
    assert chat.model is chat.snapshot.models["m"] and chat.stream
    assert chat.decision["model"] == {"requested": "m", "served": "m", "reason": "requested by the client"}


def test_a_bug_in_an_upstream_call_still_brings_the_instance_in_flight_count_down():
    """Our own bug (not an upstream failure) propagates, blames no instance, and leaks no in-flight request."""
    import asyncio
    import time

    from routing import state

    chat = chat_request()
    chat.resolve_model(OK)
    instance = chat.model.instances[0]

    async def buggy(_instance):
        raise TypeError("a bug of ours")

    with pytest.raises(TypeError):
        asyncio.run(chat._failover(buggy))
    routing_state = state.get()
    assert routing_state.total_in_flight(instance.id) == 0
    assert routing_state.breaker(instance.id).current(time.time()) == "closed"
    assert chat.attempts[-1]["outcome"] == "error"
