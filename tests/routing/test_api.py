"""End-to-end API tests: the official `openai` SDK against a live ChatVault process and live fake providers.

Every chat test runs once per adapter (OpenAI-compatible pass-through and litellm), which makes this file the
adapter conformance suite: same responses, same streaming, same usage and cost recorded, same error mapping.
"""

import asyncio
import json
import socket
import time
import uuid
from decimal import Decimal

import openai
import pytest

from routing.auth import hash_key
from routing.models import ApiKey, ConfigRevision, Model, Outcome
from tests.factories import UPSTREAM_KEY, make_key, make_model, set_instance, wait_for_model
from tests.gateway import wait_until
from tests.helpers import MESSAGES, rows, wait_rows

pytestmark = pytest.mark.django_db(transaction=True)

FAKE_TEXT = "".join(f"fake{i} " for i in range(20))  # what the fake provider answers by default
GPT_4O_MINI_IN = Decimal("1.5e-07")  # litellm's price map, per token
GPT_4O_MINI_OUT = Decimal("6e-07")


@pytest.fixture(params=["passthrough", "litellm"])
def adapter(request):
    """Return the adapter under test."""
    return request.param


@pytest.fixture
def setup(gateway, fake, adapter):
    """Return (client, raw key) for a model `vault-test` served by the fake through the adapter under test."""
    model = make_model("vault-test", [fake], adapter=adapter)
    raw = make_key()
    wait_for_model(gateway, raw, "vault-test")
    client = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)
    client.instance_id = model.instance_ids[0]
    return client, raw


def test_it_serves_a_chat_completion_and_records_it(setup, fake):
    client, raw = setup
    raw_resp = client.chat.completions.with_raw_response.create(model="vault-test", messages=MESSAGES, user="u-1")
    completion = raw_resp.parse()

    assert completion.choices[0].message.content == FAKE_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 3 and completion.usage.completion_tokens == 20
    assert raw_resp.headers["x-chatvault-model"] == "vault-test"
    assert raw_resp.headers["x-chatvault-instance"] == client.instance_id
    # The gateway's upstream key, not the client's, reaches the provider.
    assert fake.requests()[-1]["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"

    (row,) = wait_rows(1)
    assert str(row.request_id) == raw_resp.headers["x-request-id"]
    assert (row.outcome, row.status_code, row.stream) == (Outcome.OK, 200, False)
    assert (row.requested_model, row.served_model, row.instance_id, row.user) == (
        "vault-test", "vault-test", client.instance_id, "u-1"
    )  # fmt: skip
    assert (row.prompt_tokens, row.completion_tokens, row.attempts) == (3, 20, 1)
    assert row.cost_usd == 3 * GPT_4O_MINI_IN + 20 * GPT_4O_MINI_OUT
    assert row.api_key.key_hash == hash_key(raw)
    assert row.decision["instance"] == client.instance_id
    assert row.decision["strategy"] == "round-robin"
    assert row.decision["attempts"][0]["outcome"] == "ok"
    assert row.latency_ms > 0


def test_it_streams_chunks_and_records_usage_without_sending_it(setup):
    client, _ = setup
    chunks = list(client.chat.completions.create(model="vault-test", messages=MESSAGES, stream=True))

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == FAKE_TEXT
    assert all(c.usage is None for c in chunks), "client did not ask for usage"
    assert chunks[-1].choices[0].finish_reason == "stop"
    (row,) = wait_rows(1)
    assert (row.outcome, row.stream, row.prompt_tokens, row.completion_tokens) == (Outcome.OK, True, 3, 20)
    assert row.cost_usd == 3 * GPT_4O_MINI_IN + 20 * GPT_4O_MINI_OUT
    assert row.ttft_ms is not None and row.ttft_ms <= row.latency_ms


def test_it_sends_the_usage_chunk_when_asked(setup):
    client, _ = setup
    chunks = list(
        client.chat.completions.create(
            model="vault-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    assert usage_chunks[0].choices == []
    assert (usage_chunks[0].usage.prompt_tokens, usage_chunks[0].usage.completion_tokens) == (3, 20)


def test_it_relays_chunks_as_they_arrive(setup, fake):
    client, _ = setup
    fake.set_config(chunk_delay_ms=40, chunks=10)
    started = time.perf_counter()
    arrivals = []
    for _ in client.chat.completions.create(model="vault-test", messages=MESSAGES, stream=True):
        arrivals.append(time.perf_counter() - started)
    # Buffered relaying would deliver everything at once, after ~400 ms.
    assert arrivals[1] < 0.25
    assert arrivals[-1] - arrivals[1] > 0.3


def test_async_sdk_plain_and_streaming(setup, gateway):
    _, raw = setup

    async def run():
        client = openai.AsyncOpenAI(base_url=gateway.url, api_key=raw, max_retries=0)
        plain = await client.chat.completions.create(model="vault-test", messages=MESSAGES)
        stream = await client.chat.completions.create(model="vault-test", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await client.close()
        return plain, text

    plain, text = asyncio.run(run())
    assert plain.choices[0].message.content == FAKE_TEXT
    assert text == FAKE_TEXT
    assert len(wait_rows(2, outcome=Outcome.OK)) == 2


def test_unknown_openai_fields_pass_through(setup, fake):
    client, _ = setup
    client.chat.completions.create(
        model="vault-test", messages=MESSAGES, temperature=0.5, max_tokens=50, extra_body={"top_k": 7}
    )
    body = fake.requests()[-1]["body"]
    assert body["top_k"] == 7
    assert body["temperature"] == 0.5 and body["max_tokens"] == 50
    assert body["model"] == "gpt-4o-mini"


def test_max_tokens_reaches_the_upstream(setup):
    client, _ = setup
    completion = client.chat.completions.create(model="vault-test", messages=MESSAGES, max_tokens=3)
    assert completion.choices[0].message.content == "fake0 fake1 fake2 "
    assert completion.choices[0].finish_reason == "length"


# --- errors -------------------------------------------------------------------------------------------------------


def test_missing_and_invalid_keys_are_401_and_not_stored(setup, gateway):
    counted = gateway.health()["request_log"]["unauthenticated_requests"]
    with pytest.raises(openai.AuthenticationError) as exc:
        openai.OpenAI(base_url=gateway.url, api_key="cv-wrong", max_retries=0).chat.completions.create(
            model="vault-test", messages=MESSAGES
        )
    assert exc.value.status_code == 401
    assert exc.value.body["type"] == "authentication_error"
    status, headers, body = gateway.request(
        "POST", "/v1/chat/completions", json.dumps({"model": "vault-test", "messages": MESSAGES}).encode()
    )
    assert status == 401 and headers["x-request-id"]
    assert json.loads(body)["error"]["code"] == "missing_api_key"
    assert gateway.health()["request_log"]["unauthenticated_requests"] == counted + 2, "counted"
    # Every row queued so far (the authenticated /v1/models calls of the setup) is written: none is a chat row.
    wait_until(lambda: gateway.health()["request_log"]["pending"] == 0, message="request log drained")
    assert rows() == [], "not stored"


def test_revoked_and_expired_keys_are_401(setup, gateway):
    client, raw = setup
    key = ApiKey.objects.get(key_hash=hash_key(raw))
    key.expires_at = key.created_at
    key.save()
    wait_until(lambda: gateway.request("GET", "/v1/models", headers={"Authorization": f"Bearer {raw}"})[0] == 401)
    with pytest.raises(openai.AuthenticationError, match="expired"):
        client.chat.completions.create(model="vault-test", messages=MESSAGES)
    key.expires_at = None
    key.revoked_at = key.created_at
    key.save()
    wait_until(
        lambda: b"revoked" in gateway.request("GET", "/v1/models", headers={"Authorization": f"Bearer {raw}"})[2]
    )
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        client.chat.completions.create(model="vault-test", messages=MESSAGES)


def test_model_not_allowed_for_key_is_403(setup, gateway, fake):
    make_model("vault-other", [fake])
    raw = make_key(models=[Model.objects.get(name="vault-other")])
    wait_for_model(gateway, raw, "vault-other")
    client = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)
    assert [m.id for m in client.models.list()] == ["vault-other"]
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="vault-test", messages=MESSAGES)
    (row,) = wait_rows(1)
    assert (row.outcome, row.status_code) == (Outcome.CLIENT_ERROR, 403)


def test_unknown_model_is_404_model_not_found(setup):
    client, _ = setup
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert exc.value.code == "model_not_found"
    (row,) = wait_rows(1)
    assert (row.outcome, row.status_code, row.requested_model, row.instance_id) == (
        Outcome.CLIENT_ERROR, 404, "no-such-model", None
    )  # fmt: skip


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "vault-test"}, "messages"),
        ({"messages": MESSAGES}, "model"),
        ({"model": "vault-test", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "vault-test", "messages": MESSAGES, "stream": "yes"}, "stream"),
        ({"model": "vault-test", "messages": MESSAGES, "api_base": "http://evil"}, "api_base"),
        ({"model": "vault-test", "messages": MESSAGES, "metadata": {"base_url": "http://evil"}}, "metadata.base_url"),
        ({"model": "vault-test", "messages": MESSAGES, "extra": [{"api_key": "sk-x"}]}, "extra[0].api_key"),
    ],
)
def test_bad_bodies_are_400_in_openai_shape(setup, gateway, fake, body, param):
    _, raw = setup
    status, headers, resp = gateway.request(
        "POST", "/v1/chat/completions", json.dumps(body).encode(), headers={"Authorization": f"Bearer {raw}"}
    )
    error = json.loads(resp)["error"]
    assert status == 400
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert set(error) == {"message", "type", "param", "code"}
    assert fake.requests() == [], "nothing reaches the upstream"
    (row,) = wait_rows(1)
    assert (row.outcome, row.status_code, str(row.request_id)) == (Outcome.CLIENT_ERROR, 400, headers["x-request-id"])


def test_sdk_raises_bad_request_for_forbidden_fields(setup):
    client, _ = setup
    with pytest.raises(openai.BadRequestError, match="api_key"):
        client.chat.completions.create(model="vault-test", messages=MESSAGES, extra_body={"api_key": "sk-x"})


def test_invalid_json_and_oversized_bodies(setup, gateway):
    _, raw = setup
    auth = {"Authorization": f"Bearer {raw}"}
    status, _, body = gateway.request("POST", "/v1/chat/completions", b"{not json", headers=auth)
    assert status == 400 and "JSON" in json.loads(body)["error"]["message"]
    big = json.dumps({"model": "vault-test", "messages": [{"role": "user", "content": "x" * (5 * 2**20)}]}).encode()
    status, _, body = gateway.request("POST", "/v1/chat/completions", big, headers=auth)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    # Refused before authentication (nothing is read), so only the bad JSON is an authenticated, logged request.
    assert [(r.status_code, r.outcome) for r in wait_rows(1)] == [(400, "client_error")]


@pytest.mark.parametrize("placement", ["empty_choices", "empty_delta", "finish"])
def test_a_client_that_did_not_ask_for_usage_gets_no_usage_chunk_wherever_the_upstream_puts_it(setup, fake,
                                                                                               placement):  # fmt: skip
    client, _ = setup
    fake.set_config(usage_chunk=placement)  # LiteLLM-style upstreams send usage on a last chunk with an empty delta
    with client.chat.completions.with_streaming_response.create(
        model="vault-test", messages=MESSAGES, stream=True
    ) as resp:
        events = [e[len("data: ") :] for e in resp.read().decode().split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in c or c["usage"] is None for c in chunks), "client did not ask for usage"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop", "nothing after the finish chunk"
    assert all(c["choices"] for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == FAKE_TEXT
    (row,) = wait_rows(1)
    assert (row.outcome, row.prompt_tokens, row.completion_tokens) == (Outcome.OK, 3, 20), "usage still recorded"


@pytest.mark.parametrize(
    "upstream_status, sdk_error, status",
    [
        (500, openai.InternalServerError, 502),
        (503, openai.InternalServerError, 502),
        (401, openai.InternalServerError, 502),
        (429, openai.RateLimitError, 429),
        (400, openai.BadRequestError, 400),
    ],
)
def test_upstream_errors_map_to_openai_errors(setup, fake, upstream_status, sdk_error, status):
    client, _ = setup
    fake.set_config(status=upstream_status, retry_after=7)
    with pytest.raises(sdk_error) as exc:
        client.chat.completions.create(model="vault-test", messages=MESSAGES)
    assert exc.value.status_code == status
    assert UPSTREAM_KEY not in exc.value.response.text
    assert "Traceback" not in exc.value.response.text
    if upstream_status == 429:
        assert exc.value.response.headers["retry-after"] == "7"
    (row,) = wait_rows(1)
    assert row.status_code == status and row.attempts == 1
    assert row.decision["attempts"][0]["status"] == upstream_status


def test_upstream_errors_map_the_same_for_streams(setup, fake):
    client, _ = setup
    fake.set_config(status=503)
    with pytest.raises(openai.InternalServerError):
        list(client.chat.completions.create(model="vault-test", messages=MESSAGES, stream=True))
    (row,) = wait_rows(1)
    assert (row.outcome, row.status_code, row.stream) == (Outcome.UPSTREAM_ERROR, 502, True)


def test_garbage_from_upstream_is_502(setup, fake):
    client, _ = setup
    fake.set_config(fault="garbage")
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="vault-test", messages=MESSAGES)
    assert exc.value.status_code == 502
    (row,) = wait_rows(1)
    assert row.outcome == Outcome.UPSTREAM_ERROR


def test_unreachable_upstream_is_502(gateway, adapter):
    make_model("vault-dead", [type("Dead", (), {"url": f"http://127.0.0.1:{_closed_port()}/v1"})], adapter=adapter)
    raw = make_key()
    wait_for_model(gateway, raw, "vault-dead")
    with pytest.raises(openai.InternalServerError) as exc:
        openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0).chat.completions.create(
            model="vault-dead", messages=MESSAGES
        )
    assert exc.value.status_code == 502
    (row,) = wait_rows(1)
    assert row.outcome == Outcome.UPSTREAM_ERROR


def _closed_port():
    """Return a port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_timeout_caps_the_call_and_the_first_byte(setup, fake, gateway):
    client, _ = setup
    set_instance(gateway, client.instance_id, timeout=0.5)
    fake.set_config(latency_ms=3000)
    started = time.perf_counter()
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="vault-test", messages=MESSAGES)
    assert exc.value.status_code == 504
    with pytest.raises(openai.APIStatusError) as exc:
        list(client.chat.completions.create(model="vault-test", messages=MESSAGES, stream=True))
    assert exc.value.status_code == 504
    assert time.perf_counter() - started < 2.5
    assert {r.outcome for r in wait_rows(2)} == {Outcome.UPSTREAM_TIMEOUT}


def test_a_stall_mid_stream_ends_with_an_error_event(setup, fake, gateway):
    client, _ = setup
    set_instance(gateway, client.instance_id, stream_timeout=0.5)
    fake.set_config(fault="stall")
    received = []
    with pytest.raises(openai.APIError, match="stopped sending"):
        for chunk in client.chat.completions.create(model="vault-test", messages=MESSAGES, stream=True):
            received.append(chunk)
    assert received, "the chunks before the stall were relayed"
    (row,) = wait_rows(1)
    assert (row.outcome, row.status_code) == (Outcome.UPSTREAM_TIMEOUT, 200)


def test_a_client_leaving_mid_stream_is_recorded_and_cancels_upstream(setup, gateway, fake):
    _, raw = setup
    fake.set_config(chunk_delay_ms=200, chunks=50)
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    body = json.dumps({"model": "vault-test", "messages": MESSAGES, "stream": True}).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {raw}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    assert b"200 OK" in sock.recv(4096)
    sock.close()
    (row,) = wait_rows(1)
    assert row.outcome == Outcome.CLIENT_DISCONNECTED
    wait_until(lambda: fake.stats()["cancelled"] >= 1, timeout=3, message="upstream call cancelled")


# --- routing and bookkeeping -----------------------------------------------------------------------------------------


def test_round_robin_alternates_across_two_providers(gateway, fake, fake_b, adapter):
    make_model("vault-rr", [fake, fake_b], adapter=adapter)
    raw = make_key()
    wait_for_model(gateway, raw, "vault-rr")
    client = openai.OpenAI(base_url=gateway.url, api_key=raw, max_retries=0)
    served = []
    for _ in range(10):
        resp = client.chat.completions.with_raw_response.create(model="vault-rr", messages=MESSAGES)
        served.append(resp.headers["x-chatvault-instance"])
    assert all(a != b for a, b in zip(served, served[1:], strict=False)), served
    assert len(fake.requests()) == 5 and len(fake_b.requests()) == 5
    assert [r.instance_id for r in wait_rows(10)] == served


def test_request_log_rows_equal_requests_sent(setup, fake):
    client, _ = setup
    sent = 0
    for i in range(30):
        kind = i % 3
        try:
            if kind == 0:
                client.chat.completions.create(model="vault-test", messages=MESSAGES)
            elif kind == 1:
                list(client.chat.completions.create(model="vault-test", messages=MESSAGES, stream=True))
            else:
                client.chat.completions.create(model="missing", messages=MESSAGES)
        except openai.NotFoundError:
            pass
        sent += 1
    found = wait_rows(sent)
    assert len({r.request_id for r in found}) == sent
    assert sum(r.outcome == Outcome.OK for r in found) == 20


def test_models_list_and_retrieve(setup, gateway):
    client, _ = setup
    assert [m.id for m in client.models.list()] == ["vault-test"]
    assert client.models.retrieve("vault-test").id == "vault-test"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_admin_changes_reach_the_gateway_without_restart(setup, gateway):
    client, raw = setup
    Model.objects.filter(name="vault-test").update(enabled=False)
    ConfigRevision.bump()
    wait_for_model(gateway, raw, "vault-test", present=False, timeout=2)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="vault-test", messages=MESSAGES)


def test_unknown_api_routes_answer_in_openai_shape(gateway):
    status, headers, body = gateway.request("GET", "/v1/nothing-here")
    assert status == 404 and headers["x-request-id"]
    assert json.loads(body)["error"]["code"] == "not_found"


def test_every_response_carries_a_request_id(gateway):
    ids = {gateway.request("GET", "/healthz")[1]["x-request-id"] for _ in range(3)}
    assert len(ids) == 3 and all(uuid.UUID(i) for i in ids)


def test_wrong_methods_answer_in_openai_shape(gateway):
    status, _, body = gateway.request("GET", "/v1/chat/completions")
    assert status == 405 and json.loads(body)["error"]["code"] == "method_not_allowed"


def test_options_says_which_methods_and_nothing_about_the_view(gateway):
    status, headers, body = gateway.request("OPTIONS", "/v1/chat/completions")
    assert status == 204 and body == b"" and headers["x-request-id"]
    assert "POST" in headers["Allow"]


def test_admin_pages_and_static_files_carry_a_request_id_too(gateway):
    for path in ("/admin/login/", "/static/admin/css/base.css"):
        status, headers, _ = gateway.request("GET", path)
        assert status == 200 and uuid.UUID(headers["x-request-id"])


def test_tools_and_response_format_reach_the_upstream_intact(setup, fake):
    client, _ = setup
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    client.chat.completions.create(
        model="vault-test",
        messages=MESSAGES,
        tools=tools,
        tool_choice="auto",
        response_format={"type": "json_object"},
        seed=7,
        user="u-9",
    )
    body = fake.requests()[-1]["body"]
    assert body["tools"] == tools
    assert body["tool_choice"] == "auto"
    assert body["response_format"] == {"type": "json_object"}
    assert (body["seed"], body["user"]) == (7, "u-9")
