"""The litellm adapter tells upstream failures (which count against an instance) from bugs (which do not).

An error litellm raises for the call becomes an UpstreamFailure; anything else, such as a TypeError in our code or in
how we call litellm, propagates as it is, so the API answers 500 and logs it instead of blaming the upstream.
"""

import asyncio
import json
import types

import httpx
import pytest

from routing.adapters import UpstreamFailure
from routing.adapters.litellm_sdk import _litellm, adapter
from tests.factories import UPSTREAM_KEY
from tests.helpers import MESSAGES

BODY = {"messages": MESSAGES}


def instance(fake, timeout=5.0, litellm_model="openai/gpt-4o-mini", params=None):
    """Return the fields of an InstanceConfig the adapter reads, for an instance on the fake."""
    return types.SimpleNamespace(
        id="i", litellm_model=litellm_model, api_base=fake.url, api_key=UPSTREAM_KEY, timeout=timeout,
        params=params or {},
    )  # fmt: skip


def complete(inst, body=BODY):
    """Return the adapter's Completion (or raise what it raised)."""
    return asyncio.run(adapter.complete(inst, body))


def stream(inst, body=BODY):
    """Return the adapter's stream chunks (or raise what it raised)."""

    async def chunks():
        return [chunk async for chunk in adapter.stream(inst, body)]

    return asyncio.run(chunks())


@pytest.mark.parametrize("call", [complete, stream])
def test_an_upstream_error_status_is_an_upstream_failure(fake, call):
    fake.set_config(status=503)
    with pytest.raises(UpstreamFailure) as exc:
        call(instance(fake))
    assert (exc.value.kind, exc.value.status) == ("status", 503)


def test_an_upstream_that_does_not_answer_in_time_is_a_timeout(fake):
    fake.set_config(fault="hang")
    with pytest.raises(UpstreamFailure) as exc:
        complete(instance(fake, timeout=0.3))
    assert exc.value.kind == "timeout"


@pytest.mark.parametrize("call", [complete, stream])
def test_a_bug_in_how_we_call_litellm_propagates_as_it_is(fake, call):
    with pytest.raises(AttributeError):
        call(instance(fake), body=["not", "a", "dict"])
    assert fake.requests() == []


@pytest.fixture
def acompletion_raising(monkeypatch):
    """Return a function that makes litellm.acompletion raise the given exception."""

    def install(exc):
        async def acompletion(**kwargs):
            raise exc

        monkeypatch.setattr(_litellm(), "acompletion", acompletion)

    return install


@pytest.mark.parametrize(
    "exc, kind",
    [
        (json.JSONDecodeError("Expecting value", "<html>", 0), "bad_response"),
        (httpx.ReadError("connection reset"), "connection"),
    ],
    ids=["json", "transport"],
)
def test_unreadable_bodies_and_broken_connections_that_escape_litellm_are_upstream_failures(
    fake, acompletion_raising, exc, kind
):
    acompletion_raising(exc)
    with pytest.raises(UpstreamFailure) as caught:
        complete(instance(fake))
    assert caught.value.kind == kind


@pytest.mark.parametrize("bug", [TypeError("bad operand"), KeyError("choices"), AttributeError("no attribute")])
def test_our_own_bugs_inside_the_call_are_not_upstream_failures(fake, acompletion_raising, bug):
    acompletion_raising(bug)
    with pytest.raises(type(bug)):
        complete(instance(fake))
    with pytest.raises(type(bug)):
        stream(instance(fake))


def test_an_instances_provider_params_reach_litellm_and_win_over_the_client(fake):
    params = {"extra_headers": {"X-Deployment": "eu-1"}, "organization": "org-42", "max_retries": 0}
    fake.clear_requests()

    complete(instance(fake, params=params), {**BODY, "extra_headers": {"X-Deployment": "client"}})

    # The client's field is only a body field (extra_body), never headers of the call.
    assert fake.requests()[-1]["headers"]["x-deployment"] == "eu-1"
