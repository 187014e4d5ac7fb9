"""Tests for the fake OpenAI-compatible provider, exercised as a real subprocess over HTTP."""

import http.client
import json
import re
import signal
import subprocess
import sys
import time

import openai
import pytest

from tests.fakes import REPO_ROOT, FakeProvider

MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello there world"},
]
# 2 + 3 words plus 1 per message.
PROMPT_TOKENS = 7
CHAT_PATH = "/v1/chat/completions"


def expected_text(words):
    """Return the completion the fake should produce for ``words`` words."""
    return "".join(f"fake{k} " for k in range(words))


def sdk(fake, **kwargs):
    """Return an OpenAI client for ``fake`` that never retries or uses proxies."""
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("timeout", 10)
    return openai.OpenAI(
        base_url=fake.url, api_key="test-key", http_client=openai.DefaultHttpxClient(trust_env=False), **kwargs
    )


def raw(fake, body=None, headers=None, path=CHAT_PATH, method="POST", timeout=10):
    """Send one HTTP request and return (response, body bytes)."""
    connection = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=timeout)
    try:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


def sse_events(payload):
    """Split an SSE payload into the data fields of its events."""
    events = [event for event in payload.decode().split("\n\n") if event]
    assert all(event.startswith("data: ") for event in events), events
    return [event[len("data: ") :] for event in events]


def poll(predicate, timeout=5.0):
    """Wait until ``predicate()`` returns a truthy value and return it (or the last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.fixture(scope="module")
def shared_fake():
    with FakeProvider.start() as fake:
        yield fake


@pytest.fixture
def fake(shared_fake):
    shared_fake.reset_config()
    shared_fake.clear_requests()
    return shared_fake


def test_non_stream_returns_deterministic_text_and_usage(fake):
    completion = sdk(fake).chat.completions.create(model="gpt-test", messages=MESSAGES)

    assert completion.id.startswith("chatcmpl-fake-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-test"
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected_text(20)
    assert choice.finish_reason == "stop"
    assert completion.usage.prompt_tokens == PROMPT_TOKENS
    assert completion.usage.completion_tokens == 20
    assert completion.usage.total_tokens == PROMPT_TOKENS + 20


def test_max_tokens_truncates_with_length_finish_reason(fake):
    completion = sdk(fake).chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)

    assert completion.choices[0].message.content == "fake0 fake1 fake2 "
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


def test_prompt_tokens_count_text_parts_of_list_contents(fake):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "one two"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "three"},
            ],
        }
    ]

    completion = sdk(fake).chat.completions.create(model="m", messages=messages)

    assert completion.usage.prompt_tokens == 3 + 1


def test_stream_chunks_join_to_the_non_stream_text(fake):
    chunks = list(sdk(fake).chat.completions.create(model="m", messages=MESSAGES, stream=True))

    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.object == "chat.completion.chunk" and chunk.model == "m" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == expected_text(20)
    assert len(chunks) == 1 + 20 + 1
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)


def test_stream_include_usage_adds_a_final_usage_chunk(fake):
    stream = sdk(fake).chat.completions.create(
        model="m", messages=MESSAGES, stream=True, max_tokens=4, stream_options={"include_usage": True}
    )
    chunks = list(stream)

    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage.prompt_tokens == PROMPT_TOKENS
    assert usage_chunk.usage.completion_tokens == 4
    assert usage_chunk.usage.total_tokens == PROMPT_TOKENS + 4
    assert chunks[-2].choices[0].finish_reason == "length"
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == expected_text(4)


@pytest.mark.parametrize(
    ("placement", "last_choices"),
    [
        ("empty_delta", [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": None}]),
        ("finish", [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]),
    ],
)
def test_usage_chunk_moves_the_stream_usage(fake, placement, last_choices):
    fake.set_config(usage_chunk=placement)
    body = {
        "model": "m",
        "messages": MESSAGES,
        "stream": True,
        "max_tokens": 2,
        "stream_options": {"include_usage": True},
    }
    events = [json.loads(event) for event in sse_events(raw(fake, body)[1])[:-1]]

    assert events[-1]["choices"] == last_choices
    assert events[-1]["usage"] == {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 2, "total_tokens": 9}
    assert len(events) == 1 + 2 + (2 if placement == "empty_delta" else 1)
    assert all(event["usage"] is None for event in events[:-1])


@pytest.mark.parametrize(
    ("knobs", "status", "code", "message"),
    [
        ({"reject": "invalid_model"}, 400, "model_not_found", "Invalid model name passed in model=gpt-x."),
        ({"reject": "invalid_api_key"}, 401, "invalid_api_key", "Incorrect API key provided."),
        (
            {"reject": "invalid_model", "status": 404},
            404,
            "model_not_found",
            "Invalid model name passed in model=gpt-x.",
        ),
    ],
)
def test_reject_answers_like_a_misconfigured_deployment(fake, knobs, status, code, message):
    fake.set_config(**knobs)
    for stream in (False, True):
        response, payload = raw(fake, {"model": "gpt-x", "messages": MESSAGES, "stream": stream})
        assert response.status == status
        error = json.loads(payload)["error"]
        assert (error["code"], error["message"]) == (code, message)
    models_status = raw(fake, path="/v1/models", method="GET")[0].status
    assert models_status == (status if knobs["reject"] == "invalid_api_key" else 200), "a bad key cannot list models"
    fake.set_config(**{name: None for name in knobs})
    assert raw(fake, {"model": "gpt-x", "messages": MESSAGES})[0].status == 200


def test_stream_wire_format_is_sse_ending_with_done(fake):
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    response, payload = raw(fake, body, headers={"x-fake-chunks": "2"})

    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/event-stream")
    events = sse_events(payload)
    assert events[-1] == "[DONE]"
    decoded = [json.loads(event) for event in events[:-1]]
    assert decoded[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [d["choices"][0]["delta"] for d in decoded[1:3]] == [{"content": "fake0 "}, {"content": "fake1 "}]
    assert decoded[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}


@pytest.mark.parametrize("via", ["cli", "header"])
def test_chunk_delay_spaces_content_chunks(via):
    options = {"chunks": 5, "chunk_delay_ms": 100} if via == "cli" else {"chunks": 5}
    headers = {} if via == "cli" else {"x-fake-chunk-delay-ms": "100"}
    with FakeProvider.start(**options) as fake:
        stream = sdk(fake).chat.completions.create(model="m", messages=MESSAGES, stream=True, extra_headers=headers)
        arrivals = [time.perf_counter() for chunk in stream if chunk.choices and chunk.choices[0].delta.content]

    assert len(arrivals) == 5
    # Four gaps of 100 ms between five content chunks.
    assert 0.3 <= arrivals[-1] - arrivals[0] < 3


def test_latency_header_delays_the_response(fake):
    started = time.perf_counter()
    sdk(fake).chat.completions.create(model="m", messages=MESSAGES, extra_headers={"x-fake-latency-ms": "300"})

    assert time.perf_counter() - started >= 0.28


def test_cli_status_429_raises_rate_limit_error_with_retry_after():
    with FakeProvider.start(status=429) as fake:
        with pytest.raises(openai.RateLimitError) as caught:
            sdk(fake).chat.completions.create(model="m", messages=MESSAGES)

    error = caught.value
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "1"
    assert error.code == "rate_limit_exceeded"
    assert error.response.json()["error"]["param"] is None


def test_status_header_fails_only_that_request(fake):
    client = sdk(fake)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(
            model="m", messages=MESSAGES, extra_headers={"x-fake-status": "503", "x-fake-retry-after": "7"}
        )

    assert caught.value.status_code == 503
    assert caught.value.response.headers["retry-after"] == "7"
    assert set(caught.value.response.json()["error"]) == {"message", "type", "param", "code"}
    completion = client.chat.completions.create(model="m", messages=MESSAGES)
    assert completion.choices[0].message.content == expected_text(20)


def test_status_header_401_raises_authentication_error(fake):
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(fake).chat.completions.create(model="m", messages=MESSAGES, extra_headers={"x-fake-status": "401"})

    assert caught.value.code == "invalid_api_key"


def test_requests_are_recorded_with_auth_header_and_body(fake):
    sdk(fake).chat.completions.create(
        model="m", messages=MESSAGES, extra_body={"vault_trace": "abc"}, extra_headers={"X-Trace-Id": "t-1"}
    )
    sdk(fake).chat.completions.create(model="other", messages=MESSAGES)

    log = fake.call("GET", "/_fake/requests")
    assert log["count"] == 2
    first = log["requests"][0]
    assert first["path"] == CHAT_PATH
    assert first["headers"]["authorization"] == "Bearer test-key"
    assert first["headers"]["x-trace-id"] == "t-1"
    assert "content-type" not in first["headers"]
    assert first["body"]["vault_trace"] == "abc"
    assert first["body"]["messages"] == MESSAGES
    assert fake.requests()[1]["body"]["model"] == "other"

    fake.clear_requests()
    assert fake.requests() == []
    assert fake.stats()["count"] == 0


def test_runtime_config_changes_later_requests(fake):
    client = sdk(fake)
    assert fake.config()["chunks"] == 20

    fake.set_config(status=500)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=MESSAGES)

    knobs = fake.set_config(status=None, chunks=3)
    assert knobs["status"] is None and knobs["chunks"] == 3
    assert client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content == expected_text(3)

    fake.set_config(chunks=None)
    assert client.chat.completions.create(model="m", messages=MESSAGES).usage.completion_tokens == 20


def test_runtime_config_rejects_unknown_or_invalid_knobs(fake):
    with pytest.raises(AssertionError, match="400"):
        fake.set_config(colour="red")
    with pytest.raises(AssertionError, match="400"):
        fake.set_config(fault="explode")
    with pytest.raises(AssertionError, match="400"):
        fake.set_config(reject="bad_vibes")
    with pytest.raises(AssertionError, match="400"):
        fake.set_config(usage_chunk="somewhere")
    assert fake.config()["fault"] is None


def test_hang_fault_counts_client_cancellation(fake):
    with pytest.raises(openai.APITimeoutError):
        sdk(fake, timeout=0.5).chat.completions.create(
            model="m", messages=MESSAGES, extra_headers={"x-fake-fault": "hang"}
        )

    stats = poll(lambda: (s := fake.stats())["cancelled"] >= 1 and s["in_flight"] == 0 and s)
    assert stats and stats["count"] == 1


def test_hang_fault_from_runtime_config_sends_nothing(fake):
    fake.set_config(fault="hang")
    with pytest.raises(TimeoutError):
        raw(fake, {"model": "m", "messages": MESSAGES}, timeout=0.3)

    assert poll(lambda: fake.stats()["cancelled"] == 1)


def test_garbage_fault_returns_non_json(fake):
    response, payload = raw(fake, {"model": "m", "messages": MESSAGES}, headers={"x-fake-fault": "garbage"})

    assert response.status == 200
    with pytest.raises(ValueError):
        json.loads(payload)


def test_garbage_fault_stream_sends_a_non_json_event(fake):
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    response, payload = raw(fake, body, headers={"x-fake-fault": "garbage"})

    assert response.status == 200
    events = sse_events(payload)
    with pytest.raises(ValueError):
        json.loads(events[0])
    assert "[DONE]" not in events


def test_disconnect_fault_closes_without_response(fake):
    with pytest.raises(ConnectionError):
        raw(fake, {"model": "m", "messages": MESSAGES}, headers={"x-fake-fault": "disconnect"})

    assert fake.stats()["cancelled"] == 0
    assert sdk(fake).chat.completions.create(model="m", messages=MESSAGES).usage.completion_tokens == 20


def test_stall_fault_stream_sends_two_chunks_then_hangs(fake):
    connection = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=0.5)
    body = json.dumps({"model": "m", "messages": MESSAGES, "stream": True})
    connection.request("POST", CHAT_PATH, body=body, headers={"x-fake-fault": "stall"})
    response = connection.getresponse()
    received = b""
    with pytest.raises(TimeoutError):
        while True:
            received += response.read1(65536)
    connection.close()

    events = [json.loads(event) for event in sse_events(received)]
    assert [e["choices"][0]["delta"].get("content") for e in events] == ["", "fake0 ", "fake1 "]
    assert poll(lambda: fake.stats()["cancelled"] == 1)


def test_bad_bodies_get_openai_400_errors(fake):
    response, payload = raw(fake, b"{not json")
    assert response.status == 400
    assert json.loads(payload)["error"]["type"] == "invalid_request_error"

    response, payload = raw(fake, {"model": "m"})
    assert response.status == 400
    assert json.loads(payload)["error"]["param"] == "messages"

    response, payload = raw(fake, {"model": "m", "messages": MESSAGES}, headers={"x-fake-status": "soon"})
    assert response.status == 400
    assert fake.stats()["count"] == 3


def test_error_rate_is_reproducible_for_a_seed():
    def statuses():
        with FakeProvider.start(error_rate=0.5, seed=3) as fake:
            return [raw(fake, {"model": "m", "messages": MESSAGES})[0].status for _ in range(20)]

    first = statuses()
    assert set(first) == {200, 500}
    assert statuses() == first


def test_models_health_and_port_header(fake):
    models = sdk(fake).models.list()
    assert [model.id for model in models.data] == ["fake-model"]

    response, payload = raw(fake, path="/health", method="GET")
    assert json.loads(payload) == {"status": "ok"}
    for path in ("/health", "/_fake/stats", "/v1/models"):
        assert raw(fake, path=path, method="GET")[0].getheader("x-fake-provider-port") == str(fake.port)
    error, _ = raw(fake, {"model": "m", "messages": MESSAGES}, headers={"x-fake-status": "500"})
    assert error.getheader("x-fake-provider-port") == str(fake.port)


def test_port_zero_prints_the_real_port_and_sigterm_stops_cleanly():
    process = subprocess.Popen(
        [sys.executable, "-m", "routing.fake_provider", "--port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        match = re.fullmatch(r"fake provider listening on http://127\.0\.0\.1:(\d+)\n", line)
        assert match, line
        port = int(match[1])
        assert port > 0
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/health")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("x-fake-provider-port") == str(port)
        connection.close()

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert process.stderr.read() == ""
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
        process.stderr.close()


def test_helper_stop_kills_the_process():
    fake = FakeProvider.start()
    fake.stop()

    assert fake.process.poll() is not None
    with pytest.raises(ConnectionError):
        raw(fake, path="/health", method="GET")


def test_management_command_defaults_to_localhost():
    from django.core.management.base import CommandError

    from routing import fake_provider
    from routing.management.commands.fake_provider import Command

    parser = Command().create_parser("manage.py", "fake_provider")
    options = vars(parser.parse_args(["--port", "9100", "--chunks", "5", "--error-rate", "0.25", "--status", "429"]))
    config = fake_provider.config_from_options(options)

    assert config.host == "127.0.0.1"
    assert (config.port, config.chunks, config.error_rate, config.status) == (9100, 5, 0.25, 429)
    with pytest.raises(CommandError, match="error_rate"):
        parser.parse_args(["--port", "9100", "--error-rate", "2"])
